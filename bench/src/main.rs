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
    /// IPv6 pod setup: ADD/DEL of IPv6 pods, aws-cni against ptp + host-local with an IPv6 range (as root).
    Ipv6(Ipv6Args),
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
struct Ipv6Args {
    /// Smaller samples, for a smoke run.
    #[arg(long)]
    quick: bool,
    /// Directory with the release `aws-cni`.
    #[arg(long, default_value = "target/release")]
    bin_dir: PathBuf,
    /// Directory with Debian's CNI plugins.
    #[arg(long, default_value = "/usr/lib/cni")]
    peer_dir: PathBuf,
    /// Turn DAD off in the peer's pod namespaces first (ptp otherwise waits for it on every ADD).
    #[arg(long)]
    peer_nodad: bool,
    /// A real ipamd in IPv6 mode (default: an in-process stand-in answering IPv6Addr).
    #[arg(long)]
    ipamd_socket: Option<PathBuf>,
    /// Seed of the interleaving order.
    #[arg(long, default_value_t = 7)]
    seed: u64,
}

fn ipv6(args: Ipv6Args) -> Result<(), BenchError> {
    use rand::SeedableRng;
    install_interrupt_flag()?;
    let me = std::env::current_exe().map_err(BenchError::io("locating this executable"))?;
    let bins = Binaries {
        aws_cni: args.bin_dir.join("aws-cni"),
        ipamd: me.clone(),
        peer_dir: args.peer_dir.clone(),
        me,
    };
    bins.check()?;
    let p = if args.quick {
        aws_cni_bench::real::v6::V6Params {
            n: 60,
            warmup: 10,
            window: 10,
            peer_nodad: args.peer_nodad,
        }
    } else {
        aws_cni_bench::real::v6::V6Params {
            n: 300,
            warmup: 30,
            window: 30,
            peer_nodad: args.peer_nodad,
        }
    };
    let mut rng = rand::rngs::StdRng::seed_from_u64(args.seed);
    let ipamd = match args.ipamd_socket {
        Some(s) => aws_cni_bench::real::v6::V6Ipamd::Socket(s),
        None => aws_cni_bench::real::v6::V6Ipamd::StandIn,
    };
    let samples = aws_cni_bench::real::v6::run(&bins, p, ipamd, &mut rng)?;
    println!("{}", samples.table());
    Ok(())
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
    /// Only these benchmarks (comma-separated): floor, pod-setup, burst, cri, memory, churn, ipv6, ec2-calls,
    /// scale-up.
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
        Command::Ipv6(args) => ipv6(args),
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
