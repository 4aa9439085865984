//! Reader for build-nanogpt's `.npy` token shards (`np.save` of a 1-D uint16 array), so users of that reference can
//! train on the data they already have. Only the layout fineweb.py writes is accepted: little-endian `<u2`, C order,
//! one dimension.

use std::path::Path;

use crate::shards::format::ShardError;

/// Where the array starts in the file and how many tokens it holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NpyLayout {
    pub data_offset: usize,
    pub num_tokens: u64,
}

/// Parse the header of an `.npy` file whose first bytes are `bytes` and whose total length is `file_len`.
pub fn parse_npy_header(bytes: &[u8], file_len: u64, path: &Path) -> Result<NpyLayout, ShardError> {
    let bad = |reason: String| ShardError::BadNpy { path: path.display().to_string(), reason };
    if bytes.len() < 10 || &bytes[..6] != b"\x93NUMPY" {
        return Err(bad("missing \\x93NUMPY magic".into()));
    }
    let major = bytes[6];
    let (header_len, start) = match major {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 | 3 => {
            if bytes.len() < 12 {
                return Err(bad("truncated header".into()));
            }
            (u32::from_le_bytes(bytes[8..12].try_into().unwrap()) as usize, 12)
        }
        v => return Err(bad(format!("unsupported .npy version {v}"))),
    };
    let end = start + header_len;
    if bytes.len() < end {
        return Err(bad("truncated header".into()));
    }
    let header = std::str::from_utf8(&bytes[start..end]).map_err(|_| bad("header is not text".into()))?;
    let compact: String = header.chars().filter(|c| !c.is_whitespace()).collect();
    if !(compact.contains("'descr':'<u2'") || compact.contains("'descr':'|u2'")) {
        return Err(bad(format!("dtype must be little-endian uint16 ('<u2'), header: {}", header.trim())));
    }
    if compact.contains("'fortran_order':True") {
        return Err(bad("fortran_order arrays are not supported".into()));
    }
    let shape = compact
        .split("'shape':(")
        .nth(1)
        .and_then(|s| s.split(')').next())
        .ok_or_else(|| bad("no shape in header".into()))?;
    let dims: Vec<&str> = shape.split(',').filter(|s| !s.is_empty()).collect();
    if dims.len() != 1 {
        return Err(bad(format!("expected a 1-D array, shape is ({shape})")));
    }
    let num_tokens: u64 = dims[0].parse().map_err(|_| bad(format!("bad shape ({shape})")))?;
    let expected = end as u64 + num_tokens * 2;
    if expected != file_len {
        return Err(ShardError::SizeMismatch {
            path: path.display().to_string(),
            tokens: num_tokens,
            expected,
            actual: file_len,
        });
    }
    Ok(NpyLayout { data_offset: end, num_tokens })
}

/// Write tokens as a build-nanogpt style `.npy` (tests and interop; tokenmill itself writes `.bin`).
pub fn encode_npy_u16(tokens: &[u16]) -> Vec<u8> {
    let mut dict = format!("{{'descr': '<u2', 'fortran_order': False, 'shape': ({},), }}", tokens.len());
    // Pad so the data starts on a 64-byte boundary, header ends with '\n' (npy format 1.0).
    let unpadded = 10 + dict.len() + 1;
    dict.push_str(&" ".repeat((64 - unpadded % 64) % 64));
    dict.push('\n');
    let mut out = Vec::with_capacity(10 + dict.len() + tokens.len() * 2);
    out.extend_from_slice(b"\x93NUMPY\x01\x00");
    out.extend_from_slice(&(dict.len() as u16).to_le_bytes());
    out.extend_from_slice(dict.as_bytes());
    for t in tokens {
        out.extend_from_slice(&t.to_le_bytes());
    }
    out
}
