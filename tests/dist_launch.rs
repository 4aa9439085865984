//! `tokenmill launch` with real processes on CPU: the launcher's environment and supervision (with `sh` children),
//! then the binary end to end: 2 ranks training the tiny config over the tcp backend, a killed rank failing the job
//! fast, and a batch that does not divide across the ranks.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use tokenmill::train::dist::launch::{launch, LaunchError, LaunchSpec, Stream};
use tokenmill::train::dist::rendezvous::free_local_port;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn sh_spec(script: &str, nproc: usize) -> LaunchSpec {
    LaunchSpec {
        program: "sh".into(),
        args: vec!["-c".into(), script.into()],
        nproc_per_node: nproc,
        nnodes: 2,
        node_rank: 1,
        master_addr: "127.0.0.1".into(),
        master_port: 4242,
        timeout_s: Some(7.0),
    }
}

type Lines = Arc<Mutex<Vec<(usize, Stream, String)>>>;

fn collect() -> (Lines, tokenmill::train::dist::launch::LineSink) {
    let lines: Lines = Arc::default();
    let l = lines.clone();
    (lines, Arc::new(move |rank, stream, line: &str| l.lock().unwrap().push((rank, stream, line.to_string()))))
}

#[test]
fn children_get_torchrun_variables_and_prefixed_output() {
    let (lines, sink) = collect();
    let script = r#"echo "$RANK $LOCAL_RANK $WORLD_SIZE $LOCAL_WORLD_SIZE $MASTER_ADDR $MASTER_PORT $TOKENMILL_DIST_TIMEOUT"; echo oops >&2"#;
    launch(&sh_spec(script, 2), sink).unwrap();
    let lines = lines.lock().unwrap();
    let out = |rank| lines.iter().find(|(r, s, _)| *r == rank && *s == Stream::Stdout).unwrap().2.clone();
    // Node 1 of 2 with 2 processes each: global ranks 2 and 3.
    assert_eq!(out(2), "2 0 4 2 127.0.0.1 4242 7");
    assert_eq!(out(3), "3 1 4 2 127.0.0.1 4242 7");
    assert!(lines.iter().any(|(r, s, l)| *r == 3 && *s == Stream::Stderr && l == "oops"));
}

#[test]
fn a_failing_rank_stops_the_others_at_once() {
    let (lines, sink) = collect();
    let t0 = Instant::now();
    // Local rank 1 (global rank 4: node 1 of 3-process nodes) fails after a moment; the others would run for a minute.
    let script = r#"if [ "$LOCAL_RANK" = 1 ]; then sleep 0.3; echo "bad data" >&2; exit 3; fi; exec sleep 60"#;
    let err = launch(&sh_spec(script, 3), sink).unwrap_err();
    assert!(matches!(err, LaunchError::RankFailed { rank: 4, .. }), "{err}");
    let msg = err.to_string();
    assert!(msg.contains("rank 4 exited with status 3"), "{msg}");
    assert!(t0.elapsed() < Duration::from_secs(10), "{:?}", t0.elapsed());
    // The failing rank's last words are printed before the verdict.
    assert!(lines.lock().unwrap().iter().any(|(r, _, l)| *r == 4 && l == "bad data"));
}

/// A prepped tiny Shakespeare shard dir.
fn shards(dir: &Path) -> PathBuf {
    let out = dir.join("shards");
    let status = Command::new(env!("CARGO_BIN_EXE_tokenmill"))
        .args(["prep", "fineweb", "--input"])
        .arg(repo().join("data/tinyshakespeare.txt"))
        .arg("--out")
        .arg(&out)
        .args(["--shard-size", "100000", "--val-shards", "1", "--threads", "1", "--no-progress"])
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    out
}

fn launch_train(nproc: usize, data: &Path, log: &Path, extra: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tokenmill"));
    cmd.args(["launch", "--nproc-per-node", &nproc.to_string(), "--master-port"])
        .arg(free_local_port().unwrap().to_string())
        .args(["--timeout", "30", "--", "train", "--config"])
        .arg(repo().join("configs/tiny-cpu.toml"))
        .arg("--data")
        .arg(data)
        .arg("--log-dir")
        .arg(log)
        .args(["--set", "eval.val_every=0", "--set", "eval.sample_every=0"])
        .args(extra)
        // Two ranks share two cores.
        .env("RAYON_NUM_THREADS", "1");
    cmd
}

#[test]
fn two_cpu_ranks_train_end_to_end_and_a_killed_rank_fails_the_job_fast() {
    let dir = tempfile::tempdir().unwrap();
    let data = shards(dir.path());

    // End to end: 2 steps on 2 ranks.
    let log = dir.path().join("log");
    let out = launch_train(2, &data, &log, &["--max-steps", "2"]).output().unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "stdout:\n{stdout}\nstderr:\n{stderr}");
    for rank in 0..2 {
        assert!(
            stdout.contains(&format!("[rank {rank}] data parallel: rank {rank} of 2 (local rank {rank}), backend tcp")),
            "{stdout}"
        );
    }
    assert!(stdout.contains("[rank 0] step     1 | loss:"), "{stdout}");
    assert!(!stdout.contains("[rank 1] step"), "only rank 0 logs: {stdout}");
    let log_txt = std::fs::read_to_string(log.join("log.txt")).unwrap();
    assert_eq!(log_txt.lines().filter(|l| l.contains(" train ")).count(), 2, "{log_txt}");
    // The final checkpoint, written once, by rank 0.
    assert!(log.join("checkpoints/step_000002/model.safetensors").is_file());

    // A rank killed mid-run: the job fails within seconds, naming it.
    let mut child = launch_train(2, &data, &dir.path().join("log2"), &["--max-steps", "100000"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = mpsc::channel::<String>();
    let tx2 = tx.clone();
    let stdout = child.stdout.take().unwrap();
    let stderr = child.stderr.take().unwrap();
    let out_reader = std::thread::spawn(move || {
        for l in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(l);
        }
    });
    let err_reader = std::thread::spawn(move || {
        for l in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx2.send(l);
        }
    });
    let mut pid1 = None;
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    while Instant::now() < deadline {
        let Ok(line) = rx.recv_timeout(Duration::from_secs(1)) else { continue };
        if let Some(p) = line.strip_prefix("[rank 1] launched as pid ") {
            pid1 = Some(p.trim().to_string());
        }
        let training = line.starts_with("[rank 0] step ");
        seen.push(line);
        if training && pid1.is_some() {
            break;
        }
    }
    let pid1 = pid1.unwrap_or_else(|| panic!("no pid / training line: {seen:#?}"));
    let t0 = Instant::now();
    assert!(Command::new("kill").args(["-9", &pid1]).status().unwrap().success());
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if t0.elapsed() > Duration::from_secs(20) {
            let _ = child.kill();
            panic!("the launcher did not fail within 20s of rank 1 being killed");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let took = t0.elapsed();
    out_reader.join().unwrap();
    err_reader.join().unwrap();
    let rest: Vec<String> = rx.try_iter().collect();
    let all = [seen, rest].concat().join("\n");
    assert!(!status.success());
    assert!(all.contains("rank 1 was killed by signal 9"), "{all}");
    assert!(took < Duration::from_secs(10), "took {took:?}");
}

#[test]
fn batch_that_does_not_divide_across_launched_ranks_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let data = shards(dir.path());
    // tiny-cpu: 512 tokens per step, micro-batch 4 x 64: 3 ranks would need multiples of 768.
    let out = launch_train(3, &data, &dir.path().join("log"), &["--max-steps", "2"]).output().unwrap();
    assert!(!out.status.success());
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("must be divisible by micro_batch * seq_len * world = 4 * 64 * 3 = 768"), "{text}");
    assert!(text.contains("exited with status 1"), "{text}");
}

/// SIGTERM to the launcher (a scheduler's preemption): forwarded once to each rank, which finish their step, agree on
/// it, and rank 0 writes the checkpoint; the job ends with the stop line, not a lost run.
#[test]
fn sigterm_to_the_launcher_stops_every_rank_with_a_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let data = shards(dir.path());
    let log = dir.path().join("log");
    let mut child = launch_train(2, &data, &log, &["--max-steps", "100000", "--set", "checkpoint.every=0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = mpsc::channel::<String>();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for l in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(l);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(120);
    while !rx.recv_timeout(deadline - Instant::now()).expect("rank 0 logs a step").starts_with("[rank 0] step     1 |")
    {
    }
    assert!(Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap().success());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("[rank 0] stopped by SIGTERM after "), "{stderr}");
    assert!(stderr.contains("interrupted by SIGTERM"), "{stderr}");
    let ckpt = tokenmill::train::checkpoint::latest(&log.join("checkpoints")).expect("rank 0 wrote a checkpoint");
    let state = tokenmill::train::checkpoint::load_state(&ckpt).unwrap();
    let txt = std::fs::read_to_string(log.join("log.txt")).unwrap();
    assert_eq!(txt.lines().count(), state.step, "{txt}");
}
