//! `aws-cni-bench run [--quick]`: runs the benchmark suite and writes `BENCHMARKS.md`. See the crate docs.

use std::path::PathBuf;
use std::process::ExitCode;

use aws_cni_bench::error::{install_interrupt_flag, BenchError};
use aws_cni_bench::real::{child_rss_main, Binaries};
use aws_cni_bench::suite::{self, Plan, ALL};
use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "aws-cni-bench",
    about = "Benchmarks of aws-cni and ipamd against peers"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the suite and write the report (as root: it creates network namespaces).
    Run(RunArgs),
    /// Internal: run one program from a thread in NETNS and print its peak RSS as JSON.
    #[command(hide = true)]
    ChildRss {
        #[arg(long)]
        netns: PathBuf,
        #[arg(last = true)]
        program: PathBuf,
    },
}

#[derive(Debug, clap::Args)]
struct RunArgs {
    /// Smaller samples, for a smoke run.
    #[arg(long)]
    quick: bool,
    /// Where to write the report.
    #[arg(long, default_value = "BENCHMARKS.md")]
    out: PathBuf,
    /// Directory with the release `aws-cni` and `ipamd`.
    #[arg(long, default_value = "target/release")]
    bin_dir: PathBuf,
    /// Directory with Debian's CNI plugins.
    #[arg(long, default_value = "/usr/lib/cni")]
    peer_dir: PathBuf,
    /// Only these benchmarks (comma-separated): floor, pod-setup, burst, cri, memory, churn, ec2-calls, scale-up.
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Seed of the interleaving order and the workloads.
    #[arg(long, default_value_t = 7)]
    seed: u64,
}

fn run(args: RunArgs) -> Result<(), BenchError> {
    install_interrupt_flag()?;
    for o in &args.only {
        if !ALL.contains(&o.as_str()) {
            return Err(BenchError::Other(format!(
                "unknown benchmark {o:?}; known: {}",
                ALL.join(", ")
            )));
        }
    }
    let me = std::env::current_exe().map_err(BenchError::io("locating this executable"))?;
    let bins = Binaries {
        aws_cni: args.bin_dir.join("aws-cni"),
        ipamd: args.bin_dir.join("ipamd"),
        peer_dir: args.peer_dir.clone(),
        me,
    };
    let plan = Plan::new(args.quick, args.seed, args.only.clone());
    let started = aws_cni_bench::time::now();
    let mut progress = |msg: &str| {
        eprintln!(
            "[{:>5.0} s] {msg}",
            aws_cni_bench::time::since(started).as_secs_f64()
        );
    };
    let report = suite::run(&plan, &bins, &mut progress)?;
    suite::write_report(&report, &args.out)?;
    eprintln!("wrote {}", args.out.display());
    for s in &report.sections {
        for v in &s.verdicts {
            eprintln!(
                "  {:<10} {:<60} {}: {}",
                s.id,
                v.target,
                if v.met { "met" } else { "NOT met" },
                v.detail
            );
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let res = match cli.command {
        Command::Run(args) => run(args),
        Command::ChildRss { netns, program } => child_rss_main(&netns, &program),
    };
    match res {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("aws-cni-bench: {e}");
            ExitCode::FAILURE
        }
    }
}
