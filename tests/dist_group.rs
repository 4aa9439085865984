//! The process-group layer without a trainer: collectives on the in-process (threads) and tcp (sockets on
//! 127.0.0.1) backends, the rendezvous, and failure behaviour: a rank that never arrives, hangs, or dies makes the
//! others fail with an error naming it, within the timeout (a dead one at once), never a silent hang.

use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use candle_core::{Device, Tensor};
use tokenmill::train::dist::liveness::Liveness;
use tokenmill::train::dist::rendezvous::{free_local_port, Rendezvous};
use tokenmill::train::dist::{Communicator, DistError, LocalGroup, ReduceOp, TcpCommunicator};

const SHORT: Duration = Duration::from_millis(800);

/// Run `f(rank, comm)` on one thread per communicator and collect the results by rank.
fn on_threads<C, R, F>(comms: Vec<C>, f: F) -> Vec<R>
where
    C: Communicator + 'static,
    R: Send + 'static,
    F: Fn(usize, C) -> R + Send + Sync + 'static,
{
    let f = Arc::new(f);
    let handles: Vec<_> = comms
        .into_iter()
        .enumerate()
        .map(|(rank, c)| {
            let f = f.clone();
            thread::spawn(move || f(rank, c))
        })
        .collect();
    handles.into_iter().map(|h| h.join().expect("rank thread panicked")).collect()
}

/// `world` tcp ranks on threads, joined through a real rendezvous on 127.0.0.1.
fn tcp_group(world: usize, timeout: Duration) -> Vec<TcpCommunicator> {
    let addr = format!("127.0.0.1:{}", free_local_port().unwrap());
    let handles: Vec<_> = (0..world)
        .map(|rank| {
            let addr = addr.clone();
            thread::spawn(move || {
                let rv = Rendezvous::join(&addr, rank, world, b"group-id", Duration::from_secs(20)).unwrap();
                assert_eq!(rv.group_id, b"group-id", "rank {rank} got rank 0's id");
                TcpCommunicator::new(rv, timeout).unwrap()
            })
        })
        .collect();
    handles.into_iter().map(|h| h.join().unwrap()).collect()
}

/// What one rank saw in `run_collectives`: (sum, avg, f64 counts, broadcast, tensor avg).
type Seen = (Vec<f32>, Vec<f32>, Vec<f64>, Vec<f32>, Vec<f32>);

/// What every rank computes in `collectives_agree`: results of a fixed sequence of collectives.
fn run_collectives(rank: usize, c: &dyn Communicator) -> Seen {
    let world = c.world();
    // Values that are not exact in binary, so the summation order shows in the bits.
    let mut sum: Vec<f32> = (0..7).map(|i| 0.1 * (rank * 7 + i) as f32 + 1.0 / 3.0).collect();
    c.all_reduce_f32(&mut sum, ReduceOp::Sum).unwrap();
    let mut avg: Vec<f32> = vec![rank as f32 * 1.5; 3];
    c.all_reduce_f32(&mut avg, ReduceOp::Avg).unwrap();
    let mut counts = vec![rank as f64, 1.0];
    c.all_reduce_f64(&mut counts, ReduceOp::Sum).unwrap();
    let mut b = if rank == world - 1 { vec![4.0f32, 5.0, 6.0] } else { vec![0.0; 3] };
    c.broadcast_f32(&mut b, world - 1).unwrap();
    c.barrier().unwrap();
    let t = Tensor::new(&[[rank as f32, 1.0], [2.0, 3.0]], &Device::Cpu).unwrap();
    let r = c.all_reduce_tensor(&t, ReduceOp::Avg).unwrap();
    assert_eq!(r.dims(), &[2, 2]);
    let tensor = r.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    c.shutdown().unwrap();
    (sum, avg, counts, b, tensor)
}

fn expected_sum(world: usize) -> Vec<f32> {
    (0..7).map(|i| (0..world).fold(0f32, |acc, r| acc + (0.1 * (r * 7 + i) as f32 + 1.0 / 3.0))).collect()
}

#[test]
fn collectives_agree_on_both_backends_bit_for_bit() {
    for world in [1, 3] {
        let local = on_threads(LocalGroup::ranks(world, Duration::from_secs(20)), |r, c| run_collectives(r, &c));
        let tcp = on_threads(tcp_group(world, Duration::from_secs(20)), |r, c| run_collectives(r, &c));
        let mean_rank = (0..world).sum::<usize>() as f32 / world as f32;
        for results in [&local, &tcp] {
            for (sum, avg, counts, b, tensor) in results.iter() {
                assert_eq!(sum, &expected_sum(world), "rank-order sum");
                assert_eq!(avg, &vec![1.5 * mean_rank; 3]);
                assert_eq!(counts, &vec![(0..world).sum::<usize>() as f64, world as f64]);
                assert_eq!(b, &vec![4.0, 5.0, 6.0]);
                assert_eq!(tensor, &vec![mean_rank, 1.0, 2.0, 3.0]);
            }
        }
        assert_eq!(local, tcp, "world {world}: the backends must agree exactly");
    }
}

#[test]
fn ranks_that_disagree_are_named() {
    let errs = on_threads(LocalGroup::ranks(3, Duration::from_secs(20)), |rank, c| {
        let mut buf = vec![1f32; if rank == 2 { 5 } else { 4 }];
        c.all_reduce_f32(&mut buf, ReduceOp::Sum).unwrap_err().to_string()
    });
    assert!(errs.iter().all(|e| e.contains("rank 2 reduces 5 values but rank 0 reduces 4")), "{errs:?}");

    let errs = on_threads(tcp_group(2, Duration::from_secs(20)), |rank, c| {
        if rank == 1 {
            c.barrier().unwrap_err().to_string()
        } else {
            c.all_reduce_f32(&mut [1.0], ReduceOp::Sum).unwrap_err().to_string()
        }
    });
    assert!(errs.iter().all(|e| e.contains("rank 0 is in AllReduceF32(Sum) but rank 1 in Barrier")), "{errs:?}");
}

#[test]
fn rank_that_never_arrives_at_the_rendezvous_is_named() {
    let addr = format!("127.0.0.1:{}", free_local_port().unwrap());
    let t0 = Instant::now();
    // World 3, but rank 2 is never started.
    let errs: Vec<DistError> = (0..2)
        .map(|rank| {
            let addr = addr.clone();
            thread::spawn(move || Rendezvous::join(&addr, rank, 3, b"", Duration::from_secs(1)).unwrap_err())
        })
        .collect::<Vec<_>>()
        .into_iter()
        .map(|h| h.join().unwrap())
        .collect();
    let elapsed = t0.elapsed();
    let msgs: Vec<String> = errs.iter().map(|e| e.to_string()).collect();
    assert!(
        matches!(&errs[0], DistError::NotArrived { missing, world: 3, .. } if missing == &[2]),
        "rank 0: {}",
        msgs[0]
    );
    assert!(msgs[0].contains("rank 2 did not arrive within 1s"), "{}", msgs[0]);
    // Rank 1 learns the reason from rank 0 instead of timing out on its own.
    assert!(
        msgs[1].contains("rank 1: the job was aborted") && msgs[1].contains("rank 2 did not arrive"),
        "{}",
        msgs[1]
    );
    assert!(elapsed < Duration::from_secs(5), "{elapsed:?}");
}

#[test]
fn rendezvous_tolerates_any_start_order_and_refuses_a_mismatched_world() {
    let addr = format!("127.0.0.1:{}", free_local_port().unwrap());
    // Rank 1 starts first and retries until rank 0 listens.
    let a = addr.clone();
    let early = thread::spawn(move || Rendezvous::join(&a, 1, 2, b"", Duration::from_secs(20)).map(|rv| rv.group_id));
    thread::sleep(Duration::from_millis(400));
    let rv0 = Rendezvous::join(&addr, 0, 2, b"id", Duration::from_secs(20)).unwrap();
    assert_eq!(early.join().unwrap().unwrap(), b"id");
    drop(rv0);

    let addr = format!("127.0.0.1:{}", free_local_port().unwrap());
    let a = addr.clone();
    let wrong = thread::spawn(move || Rendezvous::join(&a, 1, 4, b"", Duration::from_secs(20)));
    let e = Rendezvous::join(&addr, 0, 2, b"", Duration::from_secs(20)).unwrap_err().to_string();
    assert!(e.contains("rank 1") && e.contains("world size 4, rank 0 with 2"), "{e}");
    let e = wrong.join().unwrap().unwrap_err().to_string();
    assert!(e.contains("world size 4"), "{e}");
}

#[test]
fn hung_rank_times_out_naming_it() {
    // Local group: rank 1 stops responding (sleeps past the timeout) instead of joining the all-reduce.
    let t0 = Instant::now();
    let errs = on_threads(LocalGroup::ranks(3, SHORT), |rank, c| {
        if rank == 1 {
            thread::sleep(SHORT * 3);
            return String::new();
        }
        c.all_reduce_f32(&mut [1.0], ReduceOp::Sum).unwrap_err().to_string()
    });
    for e in [&errs[0], &errs[2]] {
        assert!(e.contains("timed out after 800ms waiting for rank 1"), "{e}");
    }
    assert!(t0.elapsed() < SHORT * 4);

    // Tcp: rank 2 hangs; rank 0 names it, rank 1 is told.
    let t0 = Instant::now();
    let errs = on_threads(tcp_group(3, SHORT), |rank, c| {
        if rank == 2 {
            thread::sleep(SHORT * 3);
            return String::new();
        }
        c.all_reduce_f32(&mut [1.0], ReduceOp::Sum).unwrap_err().to_string()
    });
    assert!(errs[0].contains("rank 0: all_reduce timed out") && errs[0].contains("waiting for rank 2"), "{errs:?}");
    assert!(errs[1].contains("aborted") && errs[1].contains("waiting for rank 2"), "{errs:?}");
    assert!(t0.elapsed() < SHORT * 4);
}

#[test]
fn dead_rank_fails_the_others_at_once() {
    // The timeout is long; the failure must not wait for it.
    let long = Duration::from_secs(60);
    let t0 = Instant::now();
    let errs = on_threads(LocalGroup::ranks(3, long), |rank, c| {
        c.barrier().unwrap();
        if rank == 2 {
            drop(c); // the thread ends (returns or panics): its handle is dropped
            return String::new();
        }
        thread::sleep(Duration::from_millis(100));
        c.all_reduce_f32(&mut [1.0], ReduceOp::Sum).unwrap_err().to_string()
    });
    assert!(errs[0].contains("lost rank 2") || errs[1].contains("lost rank 2"), "{errs:?}");
    assert!(errs[0].contains("rank 2") && errs[1].contains("rank 2"), "{errs:?}");

    let errs = on_threads(tcp_group(3, long), |rank, c| {
        c.barrier().unwrap();
        if rank == 1 {
            drop(c); // closes its socket, as a process exit would
            return String::new();
        }
        c.all_reduce_f32(&mut [1.0], ReduceOp::Sum).unwrap_err().to_string()
    });
    assert!(errs[0].contains("rank 0: lost rank 1 during all_reduce"), "{errs:?}");
    assert!(errs[2].contains("aborted") && errs[2].contains("lost rank 1"), "{errs:?}");
    assert!(t0.elapsed() < Duration::from_secs(10), "{:?}", t0.elapsed());

    // After a failure the group refuses further collectives instead of exchanging garbage.
    let errs = on_threads(LocalGroup::ranks(2, SHORT), |rank, c| {
        if rank == 0 {
            let _ = c.all_reduce_f32(&mut [1.0], ReduceOp::Sum).unwrap_err();
            c.barrier().unwrap_err().to_string()
        } else {
            thread::sleep(SHORT * 2);
            String::new()
        }
    });
    assert!(errs[0].contains("already failed"), "{errs:?}");
}

/// `world` ranks joined over a real rendezvous, each with a liveness monitor that reports `(rank, message)` on the
/// returned channel; a monitor set to `None` is dropped (the rank vanishes), `leave()` is a clean exit.
fn monitored_group(world: usize) -> (Vec<Option<Liveness>>, mpsc::Receiver<(usize, String)>) {
    let addr = format!("127.0.0.1:{}", free_local_port().unwrap());
    let (tx, rx) = mpsc::channel::<(usize, String)>();
    let tx = Arc::new(Mutex::new(tx));
    let monitors = (0..world)
        .map(|rank| {
            let addr = addr.clone();
            thread::spawn(move || Rendezvous::join(&addr, rank, world, b"", Duration::from_secs(20)).unwrap())
        })
        .collect::<Vec<_>>()
        .into_iter()
        .map(|h| h.join().unwrap())
        .map(|rv| {
            let (rank, tx) = (rv.rank, tx.clone());
            Some(
                Liveness::start(rv, move |m| {
                    let _ = tx.lock().unwrap().send((rank, m));
                })
                .unwrap(),
            )
        })
        .collect();
    (monitors, rx)
}

#[test]
fn liveness_reports_a_lost_rank_to_everyone_but_not_a_clean_exit() {
    let (mut monitors, rx) = monitored_group(3);

    // Rank 2 exits cleanly: nobody is alarmed.
    monitors[2].as_ref().unwrap().leave();
    monitors[2] = None;
    assert!(rx.recv_timeout(Duration::from_millis(300)).is_err(), "a clean exit is not a failure");

    // Rank 1 vanishes without saying goodbye: rank 0 notices at once and tells the others.
    let t0 = Instant::now();
    monitors[1] = None;
    let (rank, msg) = rx.recv_timeout(Duration::from_secs(5)).expect("rank 0 notices");
    assert_eq!(rank, 0);
    assert!(msg.contains("rank 0: lost rank 1"), "{msg}");
    assert!(t0.elapsed() < Duration::from_secs(2));
}

#[test]
fn abort_reaches_the_surviving_ranks() {
    let (mut monitors, rx) = monitored_group(3);
    monitors[2] = None; // rank 2 crashes
    let mut got: Vec<(usize, String)> = (0..2).map(|_| rx.recv_timeout(Duration::from_secs(5)).unwrap()).collect();
    got.sort();
    assert!(got[0].1.contains("rank 0: lost rank 2"), "{got:?}");
    assert_eq!(got[1].0, 1);
    assert!(got[1].1.contains("rank 1: the job was aborted: rank 0: lost rank 2"), "{got:?}");
}
