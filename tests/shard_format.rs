//! The shard file contract (docs/SHARD_FORMAT.md): llm.c's header, both token widths, and clear errors on damage.

use std::path::Path;

use tokenmill::shards::format::{self, ShardError, ShardHeader, TokenWidth, HEADER_BYTES};

/// The header exactly as llm.c's `write_datafile` builds it: `np.zeros(256, dtype=np.int32)`, [0]=magic, [1]=version,
/// [2]=len(toks), written with `tofile` (little-endian on every platform llm.c supports), then the tokens.
fn llmc_reference_file(magic: i32, version: i32, tokens: &[u32], width: usize) -> Vec<u8> {
    let mut header = [0i32; 256];
    header[0] = magic;
    header[1] = version;
    header[2] = tokens.len() as i32;
    let mut out: Vec<u8> = header.iter().flat_map(|v| v.to_le_bytes()).collect();
    for &t in tokens {
        if width == 2 {
            out.extend_from_slice(&(t as u16).to_le_bytes());
        } else {
            out.extend_from_slice(&t.to_le_bytes());
        }
    }
    out
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> std::path::PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

fn our_file(width: TokenWidth, tokens: &[u32]) -> Vec<u8> {
    let mut bytes = ShardHeader::new(width, tokens.len() as u64).encode().to_vec();
    format::encode_tokens(tokens, width, &mut bytes);
    bytes
}

#[test]
fn u16_shard_is_byte_identical_to_llmc() {
    let tokens: Vec<u32> = vec![50256, 15496, 11, 995, 0, 65535, 1];
    assert_eq!(our_file(TokenWidth::U16, &tokens), llmc_reference_file(20240520, 1, &tokens, 2));
}

#[test]
fn u32_shard_is_byte_identical_to_llmc() {
    let tokens: Vec<u32> = vec![100257, 9906, 1917, 199999, 0];
    assert_eq!(our_file(TokenWidth::U32, &tokens), llmc_reference_file(20240801, 7, &tokens, 4));
}

#[test]
fn header_round_trip_both_widths() {
    let dir = tempfile::tempdir().unwrap();
    for (width, tokens) in [(TokenWidth::U16, vec![1u32, 2, 3, 50256]), (TokenWidth::U32, vec![7u32, 100276, 3])] {
        let p = write(dir.path(), "x_train_000000.bin", &our_file(width, &tokens));
        let (header, read) = format::read_shard(&p).unwrap();
        assert_eq!(header, ShardHeader::new(width, tokens.len() as u64));
        assert_eq!(read, tokens);
    }
}

#[test]
fn truncated_shard_names_file_and_sizes() {
    let dir = tempfile::tempdir().unwrap();
    let mut bytes = our_file(TokenWidth::U16, &[1, 2, 3, 4, 5]);
    bytes.truncate(bytes.len() - 3);
    let p = write(dir.path(), "cut_train_000001.bin", &bytes);
    let err = format::read_shard(&p).unwrap_err();
    assert!(matches!(err, ShardError::SizeMismatch { tokens: 5, .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains("cut_train_000001.bin") && msg.contains("truncated"), "{msg}");
}

#[test]
fn shorter_than_header_and_bad_magic_and_version() {
    let dir = tempfile::tempdir().unwrap();
    let p = write(dir.path(), "short.bin", &[0u8; 100]);
    assert!(matches!(format::read_shard(&p).unwrap_err(), ShardError::TooShort { len: 100, .. }));

    let mut bytes = our_file(TokenWidth::U16, &[1, 2]);
    bytes[0] ^= 0xff;
    let p = write(dir.path(), "magic.bin", &bytes);
    let err = format::read_shard(&p).unwrap_err();
    assert!(matches!(err, ShardError::BadMagic { .. }), "{err:?}");
    assert!(err.to_string().contains("magic.bin"));

    let mut bytes = our_file(TokenWidth::U16, &[1, 2]);
    bytes[4] = 2; // version 2 for a u16 shard
    let p = write(dir.path(), "version.bin", &bytes);
    assert!(matches!(format::read_shard(&p).unwrap_err(), ShardError::BadVersion { version: 2, .. }));
}

#[test]
fn header_is_exactly_1024_bytes() {
    assert_eq!(HEADER_BYTES, 1024);
    assert_eq!(ShardHeader::new(TokenWidth::U16, 0).encode().len(), 1024);
}
