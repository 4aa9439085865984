//! Who am I in the job: rank, local rank, world size and the rendezvous address, read in one place from whichever
//! launcher started the process.
//!
//! Precedence: RANK / WORLD_SIZE / LOCAL_RANK (`tokenmill launch`, torchrun) > Open MPI's OMPI_COMM_WORLD_* >
//! MPICH / Intel MPI's PMI_RANK / PMI_SIZE / MPI_LOCALRANKID > Slurm's SLURM_PROCID / SLURM_NTASKS / SLURM_LOCALID.
//! torchrun-style variables come first because torchrun is often run inside an `srun` allocation, where the Slurm
//! variables describe the allocation's tasks, not the training processes.
//!
//! RANK/WORLD_SIZE with WORLD_SIZE=1 is a one-rank process group (the NCCL path runs end to end on one GPU); Slurm
//! and MPI variables with a single task are ignored, since they are set in every job step, also for plain
//! single-process runs. MASTER_ADDR is required when there is more than one rank (127.0.0.1 otherwise);
//! MASTER_PORT defaults to 29500, torchrun's default.

use super::DistError;

pub const DEFAULT_MASTER_PORT: u16 = 29500;
/// The most processes a data-parallel job may have (rank 0 keeps state per rank, so this bounds what the rendezvous
/// allocates; the largest jobs run today are far below it).
pub const MAX_WORLD: usize = 1 << 20;

/// Which launcher's variables described the job.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EnvSource {
    /// RANK / WORLD_SIZE / LOCAL_RANK: `tokenmill launch` or torchrun.
    Torchrun,
    OpenMpi,
    Mpich,
    Slurm,
}

impl EnvSource {
    fn name(self) -> &'static str {
        match self {
            EnvSource::Torchrun => "the launcher (tokenmill launch / torchrun)",
            EnvSource::OpenMpi => "Open MPI (mpirun)",
            EnvSource::Mpich => "MPICH / Intel MPI (mpirun)",
            EnvSource::Slurm => "Slurm (srun)",
        }
    }
}

/// This process's place in a data-parallel job.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DistEnv {
    /// Global rank, 0..world.
    pub rank: usize,
    /// Rank on this node: the GPU index (`cuda:LOCAL_RANK`).
    pub local_rank: usize,
    pub world: usize,
    pub master_addr: String,
    pub master_port: u16,
    pub source: EnvSource,
}

/// The variable names one launcher uses.
struct Names {
    source: EnvSource,
    rank: &'static str,
    world: &'static str,
    local_rank: &'static str,
}

const LAUNCHERS: [Names; 4] = [
    Names { source: EnvSource::Torchrun, rank: "RANK", world: "WORLD_SIZE", local_rank: "LOCAL_RANK" },
    Names {
        source: EnvSource::OpenMpi,
        rank: "OMPI_COMM_WORLD_RANK",
        world: "OMPI_COMM_WORLD_SIZE",
        local_rank: "OMPI_COMM_WORLD_LOCAL_RANK",
    },
    Names { source: EnvSource::Mpich, rank: "PMI_RANK", world: "PMI_SIZE", local_rank: "MPI_LOCALRANKID" },
    Names { source: EnvSource::Slurm, rank: "SLURM_PROCID", world: "SLURM_NTASKS", local_rank: "SLURM_LOCALID" },
];

impl DistEnv {
    /// Read the process environment. `Ok(None)`: not started as part of a data-parallel job.
    pub fn from_env() -> Result<Option<DistEnv>, DistError> {
        Self::from_vars(|k| std::env::var(k).ok())
    }

    /// [`from_env`](Self::from_env) over any variable lookup (tests pass a map).
    pub fn from_vars(get: impl Fn(&str) -> Option<String>) -> Result<Option<DistEnv>, DistError> {
        let get = |k: &str| get(k).filter(|v| !v.trim().is_empty());
        let Some(names) = LAUNCHERS.iter().find(|n| get(n.rank).is_some() || get(n.world).is_some()) else {
            return Ok(None);
        };
        let source = names.source;
        let require = |present: &'static str, missing: &'static str, hint: &'static str| {
            get(missing).ok_or(DistError::MissingEnv { source_name: source.name(), present, missing, hint })
        };
        let present = if get(names.rank).is_some() { names.rank } else { names.world };
        let rank = parse_usize(names.rank, &require(present, names.rank, "set both (rank of this process, 0-based)")?)?;
        let world =
            parse_usize(names.world, &require(present, names.world, "set both (the number of processes in the job)")?)?;
        if world == 0 {
            return Err(bad(names.world, "0", "the world size must be at least 1"));
        }
        if world > MAX_WORLD {
            // Rank 0 keeps a connection slot per rank: a world of 10^12 aborted in the allocator.
            return Err(bad(names.world, &world.to_string(), &format!("at most {MAX_WORLD} processes in a job")));
        }
        if rank >= world {
            return Err(bad(names.rank, &rank.to_string(), &format!("must be below {} = {world}", names.world)));
        }
        if world == 1 && source != EnvSource::Torchrun {
            return Ok(None);
        }
        let local_rank = match get(names.local_rank) {
            Some(v) => parse_usize(names.local_rank, &v)?,
            None if world == 1 => 0,
            None => {
                return Err(DistError::MissingEnv {
                    source_name: source.name(),
                    present: names.rank,
                    missing: names.local_rank,
                    hint: "it selects this process's GPU (cuda:LOCAL_RANK)",
                })
            }
        };
        let master_addr = match get("MASTER_ADDR") {
            Some(a) => a.trim().to_string(),
            None if world == 1 => "127.0.0.1".to_string(),
            None => {
                return Err(DistError::MissingEnv {
                    source_name: source.name(),
                    present: names.world,
                    missing: "MASTER_ADDR",
                    hint: "export MASTER_ADDR=<host of rank 0> (under Slurm: \
                           $(scontrol show hostnames \"$SLURM_JOB_NODELIST\" | head -n 1))",
                })
            }
        };
        let master_port = match get("MASTER_PORT") {
            None => DEFAULT_MASTER_PORT,
            Some(p) => match p.trim().parse::<u16>() {
                Ok(port) if port > 0 => port,
                _ => return Err(bad("MASTER_PORT", &p, "expected a TCP port, 1..65535")),
            },
        };
        Ok(Some(DistEnv { rank, local_rank, world, master_addr, master_port, source }))
    }

    /// `MASTER_ADDR:MASTER_PORT`, bracketing IPv6 literals.
    pub fn master(&self) -> String {
        if self.master_addr.contains(':') && !self.master_addr.starts_with('[') {
            format!("[{}]:{}", self.master_addr, self.master_port)
        } else {
            format!("{}:{}", self.master_addr, self.master_port)
        }
    }

    /// This rank's GPU.
    pub fn cuda_device(&self) -> String {
        format!("cuda:{}", self.local_rank)
    }
}

fn bad(var: &'static str, value: &str, reason: &str) -> DistError {
    DistError::BadEnv { var, value: value.to_string(), reason: reason.to_string() }
}

fn parse_usize(var: &'static str, value: &str) -> Result<usize, DistError> {
    value.trim().parse::<usize>().map_err(|_| bad(var, value, "expected a non-negative integer"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn parse(vars: &[(&str, &str)]) -> Result<Option<DistEnv>, DistError> {
        let m: HashMap<String, String> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        DistEnv::from_vars(|k| m.get(k).cloned())
    }

    #[test]
    fn no_launcher_variables_is_a_single_process() {
        assert_eq!(parse(&[]).unwrap(), None);
        assert_eq!(parse(&[("MASTER_ADDR", "10.0.0.1"), ("LOCAL_RANK", "0")]).unwrap(), None);
    }

    #[test]
    fn torchrun_variables() {
        let e = parse(&[
            ("RANK", "3"),
            ("LOCAL_RANK", "1"),
            ("WORLD_SIZE", "8"),
            ("MASTER_ADDR", "node7"),
            ("MASTER_PORT", "1234"),
            // Ambient Slurm variables lose to torchrun's.
            ("SLURM_PROCID", "0"),
            ("SLURM_NTASKS", "2"),
        ])
        .unwrap()
        .unwrap();
        assert_eq!(
            e,
            DistEnv {
                rank: 3,
                local_rank: 1,
                world: 8,
                master_addr: "node7".into(),
                master_port: 1234,
                source: EnvSource::Torchrun
            }
        );
        assert_eq!(e.master(), "node7:1234");
        assert_eq!(e.cuda_device(), "cuda:1");
    }

    /// Issue 26: a world of 10^12 (`launch --nnodes 1000000000000`) made rank 0's rendezvous abort in the allocator.
    #[test]
    fn a_world_beyond_any_job_is_refused() {
        let big = (MAX_WORLD + 1).to_string();
        let err = parse(&[("RANK", "0"), ("WORLD_SIZE", &big), ("LOCAL_RANK", "0")]).unwrap_err().to_string();
        assert!(err.contains("WORLD_SIZE") && err.contains(&format!("at most {MAX_WORLD}")), "{err}");
    }

    #[test]
    fn world_size_one_from_the_launcher_is_a_group_with_defaults() {
        let e = parse(&[("RANK", "0"), ("WORLD_SIZE", "1")]).unwrap().unwrap();
        assert_eq!((e.rank, e.local_rank, e.world), (0, 0, 1));
        assert_eq!(e.master(), format!("127.0.0.1:{DEFAULT_MASTER_PORT}"));
        // A one-task Slurm step is an ordinary single process.
        assert_eq!(parse(&[("SLURM_PROCID", "0"), ("SLURM_NTASKS", "1")]).unwrap(), None);
    }

    #[test]
    fn slurm_and_mpi_variables() {
        let slurm = [("SLURM_PROCID", "5"), ("SLURM_NTASKS", "16"), ("SLURM_LOCALID", "5"), ("MASTER_ADDR", "gpu001")];
        let e = parse(&slurm).unwrap().unwrap();
        assert_eq!((e.rank, e.local_rank, e.world, e.source), (5, 5, 16, EnvSource::Slurm));
        assert_eq!(e.master_port, DEFAULT_MASTER_PORT);
        let ompi = [
            ("OMPI_COMM_WORLD_RANK", "1"),
            ("OMPI_COMM_WORLD_SIZE", "2"),
            ("OMPI_COMM_WORLD_LOCAL_RANK", "1"),
            ("MASTER_ADDR", "::1"),
        ];
        let e = parse(&ompi).unwrap().unwrap();
        assert_eq!((e.rank, e.world, e.source), (1, 2, EnvSource::OpenMpi));
        assert_eq!(e.master(), "[::1]:29500");
        let mpich = [("PMI_RANK", "0"), ("PMI_SIZE", "4"), ("MPI_LOCALRANKID", "0"), ("MASTER_ADDR", "h")];
        assert_eq!(parse(&mpich).unwrap().unwrap().source, EnvSource::Mpich);
    }

    #[test]
    fn bad_or_missing_variables_are_named() {
        let err = |vars: &[(&str, &str)]| parse(vars).unwrap_err().to_string();
        let e = err(&[("RANK", "0")]);
        assert!(e.contains("WORLD_SIZE"), "{e}");
        let e = err(&[("RANK", "x"), ("WORLD_SIZE", "2")]);
        assert!(e.contains("RANK=\"x\""), "{e}");
        let e = err(&[("RANK", "2"), ("WORLD_SIZE", "2"), ("LOCAL_RANK", "0"), ("MASTER_ADDR", "h")]);
        assert!(e.contains("must be below WORLD_SIZE = 2"), "{e}");
        let e = err(&[("RANK", "0"), ("WORLD_SIZE", "2"), ("LOCAL_RANK", "0")]);
        assert!(e.contains("MASTER_ADDR"), "{e}");
        let e = err(&[("RANK", "0"), ("WORLD_SIZE", "2"), ("MASTER_ADDR", "h")]);
        assert!(e.contains("LOCAL_RANK"), "{e}");
        let e = err(&[
            ("RANK", "0"),
            ("WORLD_SIZE", "2"),
            ("LOCAL_RANK", "0"),
            ("MASTER_ADDR", "h"),
            ("MASTER_PORT", "99999"),
        ]);
        assert!(e.contains("MASTER_PORT"), "{e}");
        let e = err(&[("SLURM_PROCID", "1"), ("SLURM_NTASKS", "2"), ("SLURM_LOCALID", "1")]);
        assert!(e.contains("scontrol show hostnames"), "{e}");
    }
}
