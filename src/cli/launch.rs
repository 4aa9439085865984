//! `tokenmill launch` (not built yet: issue #5).

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Arguments (accepted but unused until the command exists).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub rest: Vec<String>,
}

pub fn run(_args: Args) -> anyhow::Result<()> {
    anyhow::bail!("`tokenmill launch` is not built yet (issue #5)")
}
