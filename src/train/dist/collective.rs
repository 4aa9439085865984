//! The collectives of the byte-moving backends (tcp, local) as one "gather to a combiner, hand the result back"
//! exchange: each rank contributes a tagged payload, one place combines them in rank order, every rank receives the
//! same bytes. The tag lets the combiner tell ranks that called different collectives apart from ranks that merely
//! disagree on a length, and name them.

use super::{add_bytes, finish_op, from_bytes, to_bytes, Communicator, DistError, ReduceOp, WireElem};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Collective {
    AllReduceF32(ReduceOp),
    AllReduceF64(ReduceOp),
    BroadcastF32 { root: usize },
    Barrier,
}

pub(crate) const HEADER: usize = 5;

impl Collective {
    pub(crate) fn name(&self) -> &'static str {
        match self {
            Collective::AllReduceF32(_) | Collective::AllReduceF64(_) => "all_reduce",
            Collective::BroadcastF32 { .. } => "broadcast",
            Collective::Barrier => "barrier",
        }
    }

    pub(crate) fn header(&self) -> [u8; HEADER] {
        let (code, arg): (u8, u32) = match *self {
            Collective::AllReduceF32(ReduceOp::Sum) => (1, 0),
            Collective::AllReduceF32(ReduceOp::Avg) => (2, 0),
            Collective::AllReduceF64(ReduceOp::Sum) => (3, 0),
            Collective::AllReduceF64(ReduceOp::Avg) => (4, 0),
            Collective::BroadcastF32 { root } => (5, root as u32),
            Collective::Barrier => (6, 0),
        };
        let mut h = [0u8; HEADER];
        h[0] = code;
        h[1..].copy_from_slice(&arg.to_le_bytes());
        h
    }

    pub(crate) fn from_header(h: &[u8]) -> Option<Collective> {
        if h.len() < HEADER {
            return None;
        }
        let arg = u32::from_le_bytes(h[1..HEADER].try_into().expect("4 bytes")) as usize;
        Some(match h[0] {
            1 => Collective::AllReduceF32(ReduceOp::Sum),
            2 => Collective::AllReduceF32(ReduceOp::Avg),
            3 => Collective::AllReduceF64(ReduceOp::Sum),
            4 => Collective::AllReduceF64(ReduceOp::Avg),
            5 => Collective::BroadcastF32 { root: arg },
            6 => Collective::Barrier,
            _ => return None,
        })
    }

    /// Combine the payloads (indexed by rank) into the bytes every rank receives. Errors say which rank disagrees.
    pub(crate) fn combine(&self, parts: &[&[u8]]) -> Result<Vec<u8>, String> {
        let world = parts.len();
        match *self {
            Collective::AllReduceF32(op) => reduce::<f32>(parts, op, world),
            Collective::AllReduceF64(op) => reduce::<f64>(parts, op, world),
            Collective::BroadcastF32 { root } => {
                let data = parts.get(root).ok_or_else(|| format!("broadcast root {root} >= world {world}"))?;
                let n = (data.len() / 4) as u64;
                for (r, p) in parts.iter().enumerate().filter(|&(r, _)| r != root) {
                    let theirs = p.get(..8).map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")));
                    if theirs != Some(n) {
                        return Err(format!("rank {r} expects {theirs:?} values, root rank {root} sends {n}"));
                    }
                }
                Ok(data.to_vec())
            }
            Collective::Barrier => Ok(Vec::new()),
        }
    }
}

fn reduce<T: WireElem>(parts: &[&[u8]], op: ReduceOp, world: usize) -> Result<Vec<u8>, String> {
    let len = parts[0].len();
    if let Some((r, p)) = parts.iter().enumerate().find(|(_, p)| p.len() != len) {
        return Err(format!(
            "rank {r} reduces {} values but rank 0 reduces {} (the ranks disagree on the buffer layout)",
            p.len() / T::SIZE,
            len / T::SIZE
        ));
    }
    let mut acc = vec![T::ZERO; len / T::SIZE];
    from_bytes(parts[0], &mut acc);
    for p in &parts[1..] {
        add_bytes(&mut acc, p);
    }
    finish_op(&mut acc, op, world);
    Ok(to_bytes(&acc))
}

/// A byte-moving backend (tcp, local): one raw exchange (contribute `payload` to `collective`, get the combined bytes
/// back) plus who this rank is. Every such backend is a `Communicator` through the impl below.
pub(crate) trait Exchange: Send + Sync {
    /// "tcp", "local": `Communicator::backend`.
    const BACKEND: &'static str;
    /// `(rank, world)`.
    fn position(&self) -> (usize, usize);
    fn exchange(&self, collective: Collective, payload: Vec<u8>) -> Result<Vec<u8>, DistError>;
    /// After the closing barrier of `shutdown`: this rank's departure is normal from now on, and any further
    /// collective on this handle is an error.
    fn mark_finished(&self);
}

fn all_reduce<T: WireElem>(ex: &impl Exchange, c: Collective, buf: &mut [T]) -> Result<(), DistError> {
    let out = ex.exchange(c, to_bytes(buf))?;
    from_bytes(&out, buf);
    Ok(())
}

impl<E: Exchange> Communicator for E {
    fn rank(&self) -> usize {
        self.position().0
    }
    fn world(&self) -> usize {
        self.position().1
    }
    fn backend(&self) -> &'static str {
        E::BACKEND
    }
    fn all_reduce_f32(&self, buf: &mut [f32], op: ReduceOp) -> Result<(), DistError> {
        all_reduce(self, Collective::AllReduceF32(op), buf)
    }
    fn all_reduce_f64(&self, buf: &mut [f64], op: ReduceOp) -> Result<(), DistError> {
        all_reduce(self, Collective::AllReduceF64(op), buf)
    }
    fn broadcast_f32(&self, buf: &mut [f32], root: usize) -> Result<(), DistError> {
        // Only root's values travel; the others send their length, which the combiner checks.
        let payload = if self.rank() == root { to_bytes(buf) } else { (buf.len() as u64).to_le_bytes().to_vec() };
        let out = self.exchange(Collective::BroadcastF32 { root }, payload)?;
        from_bytes(&out, buf);
        Ok(())
    }
    fn barrier(&self) -> Result<(), DistError> {
        self.exchange(Collective::Barrier, Vec::new()).map(|_| ())
    }
    fn shutdown(&self) -> Result<(), DistError> {
        self.barrier()?;
        self.mark_finished();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn combine_reduces_in_rank_order_and_names_the_odd_rank() {
        let parts = [to_bytes(&[1f32, 2.0]), to_bytes(&[3f32, 4.0]), to_bytes(&[5f32, 6.0])];
        let refs: Vec<&[u8]> = parts.iter().map(|p| &p[..]).collect();
        let out = Collective::AllReduceF32(ReduceOp::Avg).combine(&refs).unwrap();
        let mut v = [0f32; 2];
        from_bytes(&out, &mut v);
        assert_eq!(v, [3.0, 4.0]);
        let short = to_bytes(&[1f32]);
        let refs = [&parts[0][..], &parts[1][..], &short[..]];
        let e = Collective::AllReduceF32(ReduceOp::Sum).combine(&refs).unwrap_err();
        assert!(e.contains("rank 2 reduces 1 values"), "{e}");
        for c in [
            Collective::AllReduceF64(ReduceOp::Sum),
            Collective::BroadcastF32 { root: 3 },
            Collective::Barrier,
            Collective::AllReduceF32(ReduceOp::Avg),
        ] {
            assert_eq!(Collective::from_header(&c.header()), Some(c));
        }
    }
}
