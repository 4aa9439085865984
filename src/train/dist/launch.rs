//! The process launcher behind `tokenmill launch` (torchrun's job on one node): start one child per GPU with RANK,
//! LOCAL_RANK, WORLD_SIZE, LOCAL_WORLD_SIZE, GROUP_RANK, MASTER_ADDR and MASTER_PORT set, pass their output through
//! with a `[rank N]` prefix, and supervise them: the first child that fails (non-zero exit, or killed by a signal)
//! stops the others at once and the launch fails naming that rank. SIGINT / SIGTERM sent to the launcher are
//! forwarded to the children (each one as it arrives: the first makes `train` stop after its step with a checkpoint,
//! a second makes it exit at once); those still running after a grace period are killed. Children run in their own
//! process group, so a Ctrl-C in the terminal reaches them once, through the launcher, not twice.
//!
//! Killing a child mid-step is safe: checkpoints are written to a temp directory and renamed into place.

use std::io::{BufRead, BufReader, Read};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::setup::TIMEOUT_VAR;

/// How long children get to exit after a forwarded SIGINT / SIGTERM before they are killed: `train` finishes its
/// step and writes a checkpoint first (124M on an H100: a ~1 s step and ~3 s of checkpoint).
const GRACE: Duration = Duration::from_secs(120);
const POLL: Duration = Duration::from_millis(50);

#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    #[error("launch: {0}")]
    Invalid(String),
    #[error("launch: cannot start rank {rank} ({program}): {source}")]
    Spawn {
        rank: usize,
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("rank {rank} {status} after {secs:.1}s; stopped the other ranks on this node")]
    RankFailed { rank: usize, status: String, secs: f64 },
    #[error("interrupted by {signal}; stopped every rank on this node")]
    Interrupted { signal: &'static str },
    #[error("launch: waiting for rank {rank}: {source}")]
    Wait {
        rank: usize,
        #[source]
        source: std::io::Error,
    },
}

/// Which stream of a child a line came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

/// Receives each line a child prints: (global rank, stream, line without its newline).
pub type LineSink = Arc<dyn Fn(usize, Stream, &str) + Send + Sync>;

/// What to launch on this node.
#[derive(Clone, Debug)]
pub struct LaunchSpec {
    pub program: PathBuf,
    pub args: Vec<String>,
    pub nproc_per_node: usize,
    pub nnodes: usize,
    pub node_rank: usize,
    pub master_addr: String,
    pub master_port: u16,
    /// Seconds a rank waits for the others; passed to the children as TOKENMILL_DIST_TIMEOUT.
    pub timeout_s: Option<f64>,
}

impl LaunchSpec {
    /// Refuse a spec that cannot run here (bad ranks, a port of 0, more ranks than the node can take), before anything
    /// starts. `launch` calls it too.
    pub fn validate(&self) -> Result<(), LaunchError> {
        let bad = |m: String| Err(LaunchError::Invalid(m));
        if self.nproc_per_node == 0 {
            return bad("--nproc-per-node must be at least 1".into());
        }
        if self.nnodes == 0 || self.node_rank >= self.nnodes {
            return bad(format!("--node-rank {} must be below --nnodes {}", self.node_rank, self.nnodes));
        }
        let max_world = crate::train::dist::env::MAX_WORLD;
        if self.nproc_per_node.checked_mul(self.nnodes).is_none_or(|w| w > max_world) {
            return bad(format!(
                "--nnodes {} x --nproc-per-node {} is more than the {max_world} processes a job may have; nothing was \
                 started",
                self.nnodes, self.nproc_per_node
            ));
        }
        if self.master_port == 0 {
            return bad("--master-port must be a TCP port, 1..65535".into());
        }
        if let Some(t) = self.timeout_s {
            if !(t > 0.0 && t.is_finite()) {
                return bad(format!("--timeout {t}: expected a positive number of seconds"));
            }
        }
        let (max, why) = max_local_ranks(&self.args);
        if self.nproc_per_node > max {
            return bad(format!(
                "--nproc-per-node {} is more than this node can run: {why}; nothing was started",
                self.nproc_per_node
            ));
        }
        Ok(())
    }

    pub fn world(&self) -> usize {
        self.nproc_per_node * self.nnodes
    }

    /// The environment of local rank `local`.
    pub fn child_env(&self, local: usize) -> Vec<(&'static str, String)> {
        let mut env = vec![
            ("RANK", (self.node_rank * self.nproc_per_node + local).to_string()),
            ("LOCAL_RANK", local.to_string()),
            ("WORLD_SIZE", self.world().to_string()),
            ("LOCAL_WORLD_SIZE", self.nproc_per_node.to_string()),
            ("GROUP_RANK", self.node_rank.to_string()),
            ("MASTER_ADDR", self.master_addr.clone()),
            ("MASTER_PORT", self.master_port.to_string()),
        ];
        if let Some(t) = self.timeout_s {
            env.push((TIMEOUT_VAR, t.to_string()));
        }
        env
    }
}

/// CPU ranks (the tcp backend) per core a node may start: more only time-slice one core between processes.
pub const CPU_RANKS_PER_CORE: usize = 4;

/// The most ranks this node may start for the command `args`, and why: one per visible GPU when the ranks train on
/// CUDA (a CUDA build that sees GPUs, and no `--device cpu` in the command), else [`CPU_RANKS_PER_CORE`] per core.
pub fn max_local_ranks(args: &[String]) -> (usize, String) {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let cpu_flag = args.windows(2).any(|w| w[0] == "--device" && w[1].starts_with("cpu"))
        || args.iter().any(|a| a.starts_with("--device=cpu") || a.starts_with("run.device=cpu"));
    match visible_gpus() {
        Some(gpus) if gpus > 0 && !cpu_flag => (
            gpus,
            format!(
                "{gpus} visible GPU(s), one rank each (CUDA_VISIBLE_DEVICES chooses them; `-- train --device cpu` runs \
                 CPU ranks)"
            ),
        ),
        _ => (
            cores * CPU_RANKS_PER_CORE,
            format!("CPU ranks, at most {CPU_RANKS_PER_CORE} per core, and this machine has {cores} core(s)"),
        ),
    }
}

/// GPUs this process can see (`None`: a build without CUDA, or no driver).
fn visible_gpus() -> Option<usize> {
    #[cfg(feature = "cuda")]
    {
        cudarc::driver::CudaContext::device_count().ok().map(|n| n.max(0) as usize)
    }
    #[cfg(not(feature = "cuda"))]
    {
        None
    }
}

/// Print child lines as `[rank N] line` on the launcher's stdout / stderr.
pub fn print_lines() -> LineSink {
    Arc::new(|rank, stream, line| match stream {
        Stream::Stdout => println!("[rank {rank}] {line}"),
        Stream::Stderr => eprintln!("[rank {rank}] {line}"),
    })
}

struct Rank {
    rank: usize,
    child: Child,
    status: Option<ExitStatus>,
    readers: Vec<JoinHandle<()>>,
}

/// Start the ranks of this node and supervise them until all succeed, one fails, or a signal arrives.
pub fn launch(spec: &LaunchSpec, sink: LineSink) -> Result<(), LaunchError> {
    spec.validate()?;
    let _signals = signals::Forwarding::install();
    let t0 = Instant::now();
    let mut ranks: Vec<Rank> = Vec::with_capacity(spec.nproc_per_node);
    for local in 0..spec.nproc_per_node {
        // A signal that arrives while ranks are still being started stops the ones started so far, and no more start.
        if let Some(sig) = signals::take() {
            stop_all(&mut ranks, Some(sig));
            join_readers(&mut ranks);
            return Err(LaunchError::Interrupted { signal: signals::name(sig) });
        }
        let rank = spec.node_rank * spec.nproc_per_node + local;
        let mut cmd = Command::new(&spec.program);
        cmd.args(&spec.args).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
        #[cfg(unix)]
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        for (k, v) in spec.child_env(local) {
            cmd.env(k, v);
        }
        let mut child = match cmd.spawn() {
            Ok(c) => c,
            Err(source) => {
                stop_all(&mut ranks, None);
                return Err(LaunchError::Spawn { rank, program: spec.program.display().to_string(), source });
            }
        };
        let mut readers = Vec::new();
        if let Some(out) = child.stdout.take() {
            readers.push(forward(out, rank, Stream::Stdout, sink.clone()));
        }
        if let Some(err) = child.stderr.take() {
            readers.push(forward(err, rank, Stream::Stderr, sink.clone()));
        }
        sink(rank, Stream::Stderr, &format!("launched as pid {}", child.id()));
        ranks.push(Rank { rank, child, status: None, readers });
    }

    let outcome = loop {
        if let Some(sig) = signals::take() {
            stop_all(&mut ranks, Some(sig));
            break Err(LaunchError::Interrupted { signal: signals::name(sig) });
        }
        let mut failed = None;
        for r in ranks.iter_mut().filter(|r| r.status.is_none()) {
            match r.child.try_wait() {
                Ok(Some(status)) => {
                    r.status = Some(status);
                    if !status.success() && failed.is_none() {
                        failed = Some((r.rank, describe(status)));
                    }
                }
                Ok(None) => {}
                Err(source) => {
                    failed.get_or_insert((r.rank, format!("could not be waited for ({source})")));
                }
            }
        }
        if let Some((rank, status)) = failed {
            stop_all(&mut ranks, None);
            break Err(LaunchError::RankFailed { rank, status, secs: t0.elapsed().as_secs_f64() });
        }
        if ranks.iter().all(|r| r.status.is_some()) {
            break Ok(());
        }
        std::thread::sleep(POLL);
    };
    join_readers(&mut ranks);
    outcome
}

/// Let the readers drain, so the failing rank's last words are printed before the launcher's verdict.
fn join_readers(ranks: &mut [Rank]) {
    for r in ranks {
        for h in r.readers.drain(..) {
            let _ = h.join();
        }
    }
}

fn forward(pipe: impl Read + Send + 'static, rank: usize, stream: Stream, sink: LineSink) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let mut reader = BufReader::new(pipe);
        let mut line = Vec::new();
        // Bytes, not `lines()`: one non-UTF-8 byte in a child's output must not stop its forwarding.
        while matches!(reader.read_until(b'\n', &mut line), Ok(n) if n > 0) {
            let text = String::from_utf8_lossy(&line);
            sink(rank, stream, text.trim_end_matches(['\n', '\r']));
            line.clear();
        }
    })
}

/// Stop every child still running: forward `signal` and allow a grace period, or kill at once.
fn stop_all(ranks: &mut [Rank], signal: Option<i32>) {
    if let Some(sig) = signal {
        for r in ranks.iter().filter(|r| r.status.is_none()) {
            signals::send(r.child.id(), sig);
        }
        let deadline = Instant::now() + GRACE;
        while Instant::now() < deadline {
            if let Some(again) = signals::take() {
                for r in ranks.iter().filter(|r| r.status.is_none()) {
                    signals::send(r.child.id(), again);
                }
            }
            let mut running = false;
            for r in ranks.iter_mut().filter(|r| r.status.is_none()) {
                match r.child.try_wait() {
                    Ok(Some(s)) => r.status = Some(s),
                    _ => running = true,
                }
            }
            if !running {
                return;
            }
            std::thread::sleep(POLL);
        }
    }
    for r in ranks.iter_mut().filter(|r| r.status.is_none()) {
        let _ = r.child.kill();
        r.status = r.child.wait().ok();
    }
}

fn describe(status: ExitStatus) -> String {
    if let Some(code) = status.code() {
        return format!("exited with status {code}");
    }
    #[cfg(unix)]
    {
        use std::os::unix::process::ExitStatusExt;
        if let Some(sig) = status.signal() {
            return format!("was killed by signal {sig} ({})", signals::name(sig));
        }
    }
    format!("ended ({status})")
}

/// SIGINT / SIGTERM: noted by a handler (an atomic store, async-signal-safe) and forwarded by the supervision loop.
#[cfg(unix)]
mod signals {
    use std::sync::atomic::{AtomicI32, Ordering};

    const SIGINT: i32 = 2;
    const SIGKILL: i32 = 9;
    const SIGTERM: i32 = 15;

    static RECEIVED: AtomicI32 = AtomicI32::new(0);

    extern "C" {
        // `handler` is a `void (*)(int)`, SIG_DFL (0) or SIG_IGN (1); the previous one is returned.
        fn signal(signum: i32, handler: usize) -> usize;
        fn kill(pid: i32, sig: i32) -> i32;
    }

    extern "C" fn on_signal(sig: i32) {
        RECEIVED.store(sig, Ordering::SeqCst);
    }

    /// Our handlers while the launch runs; the previous ones come back on drop (tests launch in-process).
    pub struct Forwarding {
        previous: [(i32, usize); 2],
    }

    impl Forwarding {
        pub fn install() -> Forwarding {
            RECEIVED.store(0, Ordering::SeqCst);
            let handler = on_signal as extern "C" fn(i32) as usize;
            // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
            let previous = unsafe { [(SIGINT, signal(SIGINT, handler)), (SIGTERM, signal(SIGTERM, handler))] };
            Forwarding { previous }
        }
    }

    impl Drop for Forwarding {
        fn drop(&mut self) {
            for (sig, h) in self.previous {
                // SAFETY: reinstalls the handler that was there before `install`.
                unsafe {
                    signal(sig, h);
                }
            }
        }
    }

    /// The signal received since the last call, if any.
    pub fn take() -> Option<i32> {
        match RECEIVED.swap(0, Ordering::SeqCst) {
            0 => None,
            s => Some(s),
        }
    }

    pub fn send(pid: u32, sig: i32) {
        // SAFETY: plain kill(2) on a child we spawned and have not reaped.
        unsafe {
            kill(pid as i32, sig);
        }
    }

    pub fn name(sig: i32) -> &'static str {
        match sig {
            SIGINT => "SIGINT",
            SIGTERM => "SIGTERM",
            SIGKILL => "SIGKILL",
            6 => "SIGABRT",
            11 => "SIGSEGV",
            _ => "a signal",
        }
    }
}

#[cfg(not(unix))]
mod signals {
    pub struct Forwarding;
    impl Forwarding {
        pub fn install() -> Forwarding {
            Forwarding
        }
    }
    pub fn take() -> Option<i32> {
        None
    }
    pub fn send(_pid: u32, _sig: i32) {}
    pub fn name(_sig: i32) -> &'static str {
        "a signal"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> LaunchSpec {
        LaunchSpec {
            program: "sh".into(),
            args: vec![],
            nproc_per_node: 4,
            nnodes: 2,
            node_rank: 1,
            master_addr: "node0".into(),
            master_port: 1234,
            timeout_s: Some(30.0),
        }
    }

    /// Issue 20: a SIGTERM that reached the launcher while it was still starting ranks was ignored until every rank
    /// had started. Now the ranks started so far are stopped (and reaped) and no more start.
    #[cfg(unix)]
    #[test]
    fn a_signal_while_ranks_start_stops_those_started_and_starts_no_more() {
        let pids = Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = pids.clone();
        let sink: LineSink = Arc::new(move |_, _, line: &str| {
            if let Some(pid) = line.strip_prefix("launched as pid ") {
                seen.lock().unwrap().push(pid.to_string());
                // raise(3) runs the launcher's handler on this (the launching) thread before it returns.
                // SAFETY: raise is async-signal-safe and the launcher's handler only stores to an atomic.
                unsafe {
                    libc::raise(libc::SIGTERM);
                }
            }
        });
        let spec = LaunchSpec {
            program: "sleep".into(),
            args: vec!["30".into()],
            nproc_per_node: 4,
            nnodes: 1,
            node_rank: 0,
            ..spec()
        };
        let t0 = Instant::now();
        let err = launch(&spec, sink).unwrap_err();
        assert!(matches!(err, LaunchError::Interrupted { signal: "SIGTERM" }), "{err}");
        let pids = pids.lock().unwrap();
        assert_eq!(pids.len(), 1, "no rank starts after the signal: {pids:?}");
        assert!(!std::path::Path::new("/proc").join(&pids[0]).exists(), "the started rank is stopped and reaped");
        assert!(t0.elapsed() < Duration::from_secs(20), "{:?}", t0.elapsed());
    }

    #[test]
    fn child_env_follows_torchrun() {
        let s = spec();
        let env: std::collections::HashMap<_, _> = s.child_env(2).into_iter().collect();
        assert_eq!(env["RANK"], "6");
        assert_eq!(env["LOCAL_RANK"], "2");
        assert_eq!(env["WORLD_SIZE"], "8");
        assert_eq!(env["LOCAL_WORLD_SIZE"], "4");
        assert_eq!(env["MASTER_ADDR"], "node0");
        assert_eq!(env["MASTER_PORT"], "1234");
        assert_eq!(env[TIMEOUT_VAR], "30");
    }

    #[test]
    fn bad_specs_are_refused() {
        let e = |s: LaunchSpec| launch(&s, print_lines()).unwrap_err().to_string();
        assert!(e(LaunchSpec { nproc_per_node: 0, ..spec() }).contains("--nproc-per-node"));
        // Issue 20: 100,000 ranks started ~16,000 processes; now refused before any starts, with the bound.
        let err = e(LaunchSpec { nproc_per_node: 100_000, ..spec() });
        assert!(
            err.contains("--nproc-per-node 100000 is more than this node can run") && err.contains("core"),
            "{err}"
        );
        assert!(e(LaunchSpec { node_rank: 2, ..spec() }).contains("--node-rank 2 must be below --nnodes 2"));
        assert!(e(LaunchSpec { timeout_s: Some(-1.0), ..spec() }).contains("--timeout"));
        // Issue 26: --nnodes 10^12 started ranks whose rendezvous aborted in the allocator.
        let err = e(LaunchSpec { nnodes: 1_000_000_000_000, node_rank: 0, ..spec() });
        assert!(err.contains("--nnodes 1000000000000") && err.contains("nothing was started"), "{err}");
        let err = e(LaunchSpec { nnodes: usize::MAX, node_rank: 0, ..spec() });
        assert!(err.contains("more than the"), "{err}");
    }
}
