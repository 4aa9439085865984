//! `tokenmill launch`: start one training process per GPU on this node, like torchrun, and supervise them.
//!
//! ```text
//! tokenmill launch --nproc-per-node 8 -- train --config configs/gpt2-124m.toml --data shards/edu_fineweb10B
//! # two nodes (run on each, with its --node-rank):
//! tokenmill launch --nproc-per-node 8 --nnodes 2 --node-rank 0 --master-addr node0 -- train --config ...
//! # CPU ranks (tcp backend), e.g. to try data parallelism without GPUs:
//! tokenmill launch --nproc-per-node 2 -- train --config configs/tiny-cpu.toml --data shards/tinyshakespeare
//! ```
//!
//! Each child is this same binary with the arguments after `--`, and RANK, LOCAL_RANK, WORLD_SIZE, LOCAL_WORLD_SIZE,
//! MASTER_ADDR, MASTER_PORT in its environment; its output comes back prefixed with `[rank N]`. When one rank fails
//! the others are stopped and the launch fails naming it. `tokenmill train` reads the same variables when started by
//! torchrun, srun or mpirun instead.

use anyhow::Context;

use crate::train::dist::launch::{launch, print_lines, LaunchSpec};

#[derive(clap::Args, Debug)]
pub struct Args {
    // torchrun's underscore spellings (--nproc_per_node, --node_rank, --master_addr, --master_port) are accepted too.
    /// Processes to start on this node (one per GPU: rank r uses cuda:LOCAL_RANK).
    #[arg(long, alias = "nproc_per_node", default_value_t = 1)]
    pub nproc_per_node: usize,
    /// Nodes in the job.
    #[arg(long, default_value_t = 1)]
    pub nnodes: usize,
    /// This node's index, 0..nnodes.
    #[arg(long, alias = "node_rank", default_value_t = 0)]
    pub node_rank: usize,
    /// Host of global rank 0 (node 0), where the rendezvous listens.
    #[arg(long, alias = "master_addr", default_value = "127.0.0.1")]
    pub master_addr: String,
    /// Port of the rendezvous on the master host.
    #[arg(long, alias = "master_port", default_value_t = crate::train::dist::env::DEFAULT_MASTER_PORT)]
    pub master_port: u16,
    /// Seconds a rank waits for the others (at the rendezvous, in any collective) before failing [default: 600].
    #[arg(long, value_name = "SECONDS")]
    pub timeout: Option<f64>,
    /// The tokenmill command every rank runs, after `--`: e.g. `-- train --config configs/gpt2-124m.toml`.
    #[arg(last = true, required = true, value_name = "COMMAND")]
    pub command: Vec<String>,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let program = std::env::current_exe().context("locating the tokenmill executable to start the ranks with")?;
    let spec = LaunchSpec {
        program,
        args: args.command,
        nproc_per_node: args.nproc_per_node,
        nnodes: args.nnodes,
        node_rank: args.node_rank,
        master_addr: args.master_addr,
        master_port: args.master_port,
        timeout_s: args.timeout,
    };
    spec.validate()?;
    eprintln!(
        "launch: {} rank(s) on node {} of {} (world size {}), rendezvous {}:{}",
        spec.nproc_per_node,
        spec.node_rank,
        spec.nnodes,
        spec.world(),
        spec.master_addr,
        spec.master_port
    );
    launch(&spec, print_lines())?;
    Ok(())
}
