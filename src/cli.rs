//! Command-line interface: flags in, one function per command, an exit code out.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand};

use crate::pipeline::{self, RunOptions, shards};
use crate::stages::KINDS;

/// Cloak face photos and measure, on real data, whether the cloak still protects anyone.
#[derive(Parser, Debug)]
#[command(name = "cloakbench", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run a pipeline file: each stage reads and writes named Parquet tables under
    /// <run_root>/<pipeline name>/; stages whose configuration and inputs are unchanged since
    /// the last successful run are skipped.
    Run {
        #[command(flatten)]
        pipeline: PipelineArgs,
        /// Run one shard of a planned run (`cloakbench plan`): its index, or `auto` to take it
        /// from the array scheduler (JOB_COMPLETION_INDEX, SLURM_ARRAY_TASK_ID,
        /// AWS_BATCH_JOB_ARRAY_INDEX). Runs the per-picture stages of the current phase on the
        /// shard's pictures; exits 0 at once when the shard is already done.
        #[arg(long, value_name = "K|auto")]
        shard: Option<String>,
        /// With --shard: the number of shards this task expects (refused if the plan has another).
        #[arg(long, requires = "shard")]
        shards: Option<usize>,
        /// Rerun every stage, even those already done.
        #[arg(long)]
        force: bool,
        /// No progress and no log lines on stderr (results are still printed).
        #[arg(long, short)]
        quiet: bool,
        /// Check the pipeline, print its stages (expanded, merged, in run order) and which of them
        /// would run against the run folder, with why; run nothing, write nothing.
        #[arg(long)]
        dry_run: bool,
        /// After the run, write its report (as `cloakbench report`) into <run>/report/.
        #[arg(long)]
        report: bool,
    },
    /// Plan a sharded run: list the dataset once and write <run>/plan.json, the shards and
    /// their pictures (immutable). Then run every shard (`run --shard K`, usually as an array
    /// job: see scripts/launch/) and `commit`.
    Plan {
        #[command(flatten)]
        pipeline: PipelineArgs,
        /// How many shards: many more than machines is normal (stragglers even out).
        #[arg(long)]
        shards: usize,
        /// Accepted as for `run` and `commit` (a launcher passes them all the same flags).
        #[arg(long, short)]
        quiet: bool,
    },
    /// Commit a sharded run: check every shard's marker and parts, write each table's manifest,
    /// run the stages that need the whole dataset, and after the last phase write _SUCCESS.
    /// Exit code 5: the next phase's shards are due (run the array again, then commit again).
    Commit {
        #[command(flatten)]
        pipeline: PipelineArgs,
        #[arg(long, short)]
        quiet: bool,
    },
    /// Write a run's report: one HTML page (plots, tables, before/after pictures) made from the
    /// run's tables, that opens from disk with no network: RUN/report/index.html.
    Report {
        /// The run folder, local or s3://bucket/prefix (a pipeline's <run_root>/<name>).
        run: String,
        /// Write the page here instead (local folder or s3://).
        #[arg(long, value_name = "URL")]
        out: Option<String>,
        #[arg(long, short)]
        quiet: bool,
    },
    /// Cloak your own photos: files or folders in, `<stem>_cloaked.<ext>` out. Every face in
    /// every picture is protected; originals are never touched; pictures already cloaked are
    /// skipped. Exit code 3: no picture found; 2: no face found.
    Cloak {
        /// Pictures or folders.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        #[arg(long, value_enum, default_value = "fawkes")]
        method: MethodArg,
        /// Strength: fawkes low|mid|high; fawkes_v03 needs a pipeline (it picks a target identity).
        #[arg(long)]
        mode: Option<String>,
        /// The attacker's models, comma-separated (default depends on the method and mode).
        #[arg(long, value_delimiter = ',')]
        ensemble: Option<Vec<String>>,
        #[arg(long, value_enum, default_value = "png")]
        format: crate::attack::cloaker::OutputFormat,
        /// JPEG quality when --format jpg.
        #[arg(long, default_value_t = 95)]
        jpeg_quality: u8,
        /// Write the cloaked pictures here instead of beside the originals.
        #[arg(long)]
        out: Option<PathBuf>,
        /// Look into sub-folders too.
        #[arg(long)]
        recursive: bool,
        /// Pictures cloaked together (read, optimised and written as one batch).
        #[arg(long, default_value_t = 4)]
        batch_size: usize,
        /// Pictures optimised at once, when fewer than --batch-size: each picture that
        /// converges makes room for the next of its batch, so the optimised batch stays full.
        #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
        in_flight: Option<u64>,
        /// Bound on the pixels optimised at once (pictures x height x width of their faces'
        /// regions): what memory follows.
        #[arg(long, default_value_t = crate::attack::engine::DEFAULT_MAX_BATCH_PIXELS, value_parser = clap::value_parser!(i64).range(1..))]
        max_batch_pixels: i64,
        #[arg(long, default_value_t = 0)]
        seed: i64,
        /// Run the method's whole schedule, as the original tool does. By default, with Fawkes
        /// mid and high, each picture stops once its cloak has converged within its budget
        /// (README, "Stopping at convergence": the same protection in fewer steps); the other
        /// cloaks always run their whole schedule (stopping was not shown to keep their protection).
        #[arg(long)]
        fixed_schedule: bool,
        /// auto, cpu, cuda or cuda:N.
        #[arg(long, default_value = "auto")]
        device: String,
        #[arg(long, short)]
        quiet: bool,
        /// Also write a page that shows each cloaked picture beside its original and the
        /// difference, amplified, with its DSSIM, PSNR and L-inf (cloakbench-report/index.html).
        #[arg(long)]
        report: bool,
    },
    /// The face models of the zoo.
    Models {
        #[command(subcommand)]
        command: ModelsCommand,
    },
    /// List the stage kinds a pipeline file can use, with their input and output tables.
    Stages,
    /// Benchmarks that print figures (throughput, accuracy, memory).
    Bench {
        #[command(subcommand)]
        command: BenchCommand,
        /// Where the figures are written as a table (`<out>/<bench>/bench.parquet`).
        #[arg(long, global = true, default_value = "runs/bench")]
        out: String,
    },
}

/// The pipeline a command works on: its file, overrides and run root.
#[derive(clap::Args, Debug)]
struct PipelineArgs {
    /// Pipeline file, e.g. pipelines/baseline.toml.
    pipeline: PathBuf,
    /// Override a setting: a dotted key into the file and a value, e.g.
    /// `--set ingest.dataset=s3://bucket/faces`, `--set split.seed=3`, `--set run_root=/tmp/runs`.
    /// Values are read as TOML when they parse (numbers, booleans, ["lists"]), else as text.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
    /// Where runs are written (local folder or s3://bucket/prefix); default: the file's run_root, else `runs`.
    #[arg(long, value_name = "URL")]
    run_root: Option<String>,
}

impl PipelineArgs {
    fn load(&self) -> Result<pipeline::Plan> {
        let mut set = self.set.clone();
        if let Some(root) = &self.run_root {
            set.push(format!("pipeline.run_root={root}"));
        }
        Ok(pipeline::load(&self.pipeline, &set, KINDS)?)
    }
}

#[derive(Subcommand, Debug)]
enum BenchCommand {
    /// Ingest and embed images/s on a dataset, beside the model's raw forward throughput on
    /// random tensors of the same batch size, and peak memory.
    Baseline {
        /// Dataset to measure on.
        #[arg(long, default_value = "../shared/datasets/facescrub12")]
        dataset: String,
        #[arg(long, default_value = "dlib_resnet29_150")]
        model: String,
        /// Embed batch sizes to measure (how throughput moves with the batch).
        #[arg(long, alias = "batch-size", value_delimiter = ',', default_value = "8,32,64")]
        batch_sizes: Vec<usize>,
        /// auto, cpu, cuda or cuda:N.
        #[arg(long, default_value = "auto")]
        device: String,
        /// How pictures become the model's input: `resize` (the whole picture) or `aligned`
        /// (each picture's face found by the detect stage first, untimed, and cropped as the
        /// model card says: the study's path).
        #[arg(long, default_value = "resize", value_parser = ["resize", "aligned"])]
        input: String,
    },
    /// Every model of the zoo: linear-probe and 1-NN accuracy on facescrub12's 70/30 split,
    /// verification AUC on LFW pairs, and embed images/s. Runs pipelines/zoo_facescrub12.toml
    /// and pipelines/zoo_lfw.toml (finished stages are reused; --force reruns them).
    Zoo {
        /// Where the two runs are written.
        #[arg(long, default_value = "runs")]
        run_root: String,
        #[arg(long)]
        force: bool,
    },
    /// Decoding and resizing pictures/s on 1 thread and on every core, the speed-up as the
    /// ratio (files read into memory first: no storage in the figure).
    Decode {
        #[arg(long, default_value = "../shared/datasets/facescrub12")]
        dataset: String,
    },
    /// MTCNN detection pictures/s on a dataset's pictures (decoded first), beside
    /// facenet-pytorch's MTCNN on the same files (scripts/reference/mtcnn_detect.py).
    Detect {
        /// A local dataset folder.
        #[arg(long, default_value = "../shared/datasets/facescrub12")]
        dataset: String,
        /// Pictures measured, drawn evenly over the dataset's sorted files.
        #[arg(long, default_value_t = 200)]
        pictures: usize,
        #[arg(long, default_value = "auto")]
        device: String,
    },
    /// Seconds per picture of each cloak method at several batch sizes, beside the same Fawkes
    /// attack in plain PyTorch on the same weights (scripts/reference/fawkes_attack.py).
    Cloak {
        /// Picture size (height width) the attacks run on.
        #[arg(long, num_args = 2, default_values_t = [400, 400])]
        size: Vec<u32>,
        /// Pictures per measurement.
        #[arg(long, default_value_t = 8)]
        pictures: usize,
        /// Optimisation steps per measurement (projected onto each method's schedule).
        #[arg(long, default_value_t = 5)]
        steps: usize,
        #[arg(long, value_delimiter = ',', default_value = "1,4,8")]
        batch_sizes: Vec<usize>,
        #[arg(long, default_value = "auto")]
        device: String,
    },
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum MethodArg {
    Fawkes,
    Lowkey,
    Anticluster,
}

#[derive(Subcommand, Debug)]
enum ModelsCommand {
    /// Installed models with input size, output dimension, source and licence.
    List,
}

/// Exit codes of `cloakbench run` (documented in the README).
pub mod exit {
    /// Every stage ran (or was up to date) and no item failed.
    pub const SUCCESS: u8 = 0;
    /// The run stopped on an error; the message names what and where.
    pub const ERROR: u8 = 1;
    /// The pipeline or its overrides are invalid: nothing ran and nothing was written.
    /// Retrying cannot help.
    pub const INVALID: u8 = 2;
    /// The run completed and wrote its tables, but some items failed (pictures that could not
    /// be read, protected pictures left uncloaked): the summary on stderr names them.
    pub const ITEMS_FAILED: u8 = 3;
    /// Another run holds the run root (its lock names it): nothing was written; retrying
    /// once it has finished helps.
    pub const BUSY: u8 = 4;
    /// `commit`: a phase is committed and the shards of the next phase are due: run the array
    /// again, then commit again.
    pub const NEXT_PHASE: u8 = 5;
}

/// Parses the command line, runs the command and maps the outcome to an exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match dispatch(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("cloakbench: error: {e:#}");
            let invalid = e.chain().any(|cause| cause.is::<pipeline::PlanError>());
            let busy = e.chain().any(|cause| cause.is::<crate::io::lease::InUse>());
            ExitCode::from(if invalid {
                exit::INVALID
            } else if busy {
                exit::BUSY
            } else {
                exit::ERROR
            })
        }
    }
}

fn dispatch(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Run { pipeline, shard: Some(shard), shards, force, quiet, .. } => run_shard(&pipeline, &shard, shards, RunOptions { force, quiet }),
        Command::Run { pipeline, force, quiet, dry_run, report, .. } => run(&pipeline, RunOptions { force, quiet }, dry_run, report),
        Command::Plan { pipeline, shards, .. } => plan_shards(&pipeline, shards),
        Command::Commit { pipeline, quiet } => commit(&pipeline, RunOptions { force: false, quiet }),
        Command::Report { run, out, quiet } => {
            let index = crate::report::write(&run, out.as_deref(), quiet)?;
            println!("report: {index}");
            Ok(ExitCode::SUCCESS)
        }
        Command::Models { command: ModelsCommand::List } => models_list(),
        Command::Cloak {
            paths,
            method,
            mode,
            ensemble,
            format,
            jpeg_quality,
            out,
            recursive,
            batch_size,
            in_flight,
            max_batch_pixels,
            seed,
            fixed_schedule,
            device,
            quiet,
            report,
        } => {
            let method = match method {
                MethodArg::Fawkes => crate::attack::methods::Method::Fawkes,
                MethodArg::Lowkey => crate::attack::methods::Method::Lowkey,
                MethodArg::Anticluster => crate::attack::methods::Method::Anticluster,
            };
            crate::commands::cloak::run(&crate::commands::cloak::Request {
                paths,
                method,
                mode,
                ensemble,
                format,
                jpeg_quality,
                out,
                recursive,
                batch_size,
                in_flight: in_flight.map(|n| n as usize),
                max_batch_pixels,
                seed,
                early_stop: !fixed_schedule,
                device,
                quiet,
                report,
            })
        }
        Command::Stages => stages(),
        Command::Bench { command: BenchCommand::Baseline { dataset, model, batch_sizes, device, input }, out } => {
            let mut batch_sizes = batch_sizes;
            batch_sizes.dedup(); // a repeated size would find its embeddings done and skip
            crate::commands::bench::baseline(&dataset, &model, &batch_sizes, &device, &input, &out)
        }
        Command::Bench { command: BenchCommand::Decode { dataset }, out } => crate::commands::bench::decode(&dataset, &out),
        Command::Bench { command: BenchCommand::Detect { dataset, pictures, device }, out } => {
            crate::commands::bench::detect(&dataset, pictures, &device, &out)
        }
        Command::Bench { command: BenchCommand::Zoo { run_root, force }, out } => crate::commands::bench::zoo(&run_root, force, &out),
        Command::Bench { command: BenchCommand::Cloak { size, pictures, steps, batch_sizes, device }, out } => {
            crate::commands::bench::cloak([size[0], size[1]], pictures, steps, &batch_sizes, &device, &out)
        }
    }
}

fn run(args: &PipelineArgs, options: RunOptions, dry_run: bool, report: bool) -> Result<ExitCode> {
    let plan = args.load()?;
    if dry_run {
        print_plan(&plan);
        match pipeline::preview(&plan, options.quiet) {
            Ok(preview) => print_preview(&preview),
            // The plan is sound; where its run stands could not be read (an S3 bucket out of reach).
            Err(e) => println!("what would run: cannot tell ({e:#})"),
        }
        return Ok(ExitCode::SUCCESS);
    }
    let summary = pipeline::run(&plan, &options)?;
    print_results(&summary);
    if report {
        println!("report: {}", crate::report::write(&summary.run_dir, None, options.quiet)?);
    }
    Ok(account(&summary))
}

fn plan_shards(args: &PipelineArgs, shards: usize) -> Result<ExitCode> {
    let plan = args.load()?;
    let (planned, url) = shards::plan(&plan, shards)?;
    let sizes: Vec<usize> = planned.keys.iter().map(Vec::len).collect();
    println!(
        "plan: {} items of {} in {} shards ({}-{} each), {} phase(s): {url}",
        planned.items,
        planned.source,
        planned.shards,
        sizes.iter().min().unwrap_or(&0),
        sizes.iter().max().unwrap_or(&0),
        planned.phases
    );
    println!(
        "next: run shards 0..{} (`cloakbench run {} --shard K`, or an array job: scripts/launch/), then `cloakbench commit`",
        planned.shards,
        args.pipeline.display()
    );
    Ok(ExitCode::SUCCESS)
}

fn run_shard(args: &PipelineArgs, shard: &str, shards: Option<usize>, options: RunOptions) -> Result<ExitCode> {
    let (index, array_size) = match shard {
        "auto" => shards::shard_from_env(|v| std::env::var(v).ok())?,
        k => (k.parse().map_err(|_| pipeline::PlanError(format!("--shard {k:?}: a shard index or auto")))?, None),
    };
    let plan = args.load()?;
    crate::runtime::stop_on_sigterm();
    match shards::run_shard(&plan, index, shards.or(array_size), &options)? {
        shards::ShardOutcome::RunComplete => crate::progress::info(options.quiet, &format!("shard {index}: the run is committed; nothing to do")),
        shards::ShardOutcome::AlreadyDone { phase } => {
            crate::progress::info(options.quiet, &format!("shard {index}: phase {phase} already done; nothing to do"))
        }
        shards::ShardOutcome::Ran { phase, marker, tally } => {
            crate::progress::info(options.quiet, &format!("shard {index}: phase {phase} done, {} items failed: {marker}", tally.failed.n));
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn commit(args: &PipelineArgs, options: RunOptions) -> Result<ExitCode> {
    let plan = args.load()?;
    match shards::commit(&plan, &options)? {
        shards::Committed::NextPhase(phase, _) => {
            println!("commit: phase {phase} committed; next: run the shards again (phase {}), then commit again", phase + 1);
            Ok(ExitCode::from(exit::NEXT_PHASE))
        }
        shards::Committed::Done(summary) => {
            print_results(&summary);
            println!("commit: every phase committed; {}/_SUCCESS written", summary.run_dir);
            Ok(account(&summary))
        }
    }
}

/// Prints what the stages reported for the user, and where the tables are.
fn print_results(summary: &pipeline::RunSummary) {
    for text in &summary.report {
        println!("{text}");
    }
    println!("\ntables in {}", summary.run_dir);
}

/// Names on stderr what failed or was skipped; the exit code says whether items failed.
fn account(summary: &pipeline::RunSummary) -> ExitCode {
    let retried = crate::io::retries::count();
    if retried > 0 {
        eprintln!("[cloakbench] S3: {retried} requests retried after transient faults (each logged above)");
    }
    let failures = summary.failure_lines();
    if !failures.is_empty() {
        eprintln!("[cloakbench] summary of items that failed or were skipped (details in {}/_run.json):", summary.run_dir);
        for line in failures {
            eprintln!("[cloakbench]   {line}");
        }
    }
    if summary.failed() > 0 {
        eprintln!("[cloakbench] {} items failed: exit code {}", summary.failed(), exit::ITEMS_FAILED);
        return ExitCode::from(exit::ITEMS_FAILED);
    }
    ExitCode::SUCCESS
}

/// The plan, a stage a line: name, kind, what it reads and writes; then the merged tables.
fn print_plan(plan: &pipeline::Plan) {
    println!("{}: {} stages, in run order", plan.name, plan.stages.len());
    for s in &plan.stages {
        let reads: Vec<String> = s.inputs.values().flatten().cloned().collect();
        let writes: Vec<&String> = s.outputs.values().collect();
        println!("  {:<48} {:<14} {} -> {}", s.name, s.kind.name, reads.join(" "), writes.iter().map(|w| w.as_str()).collect::<Vec<_>>().join(" "));
    }
    if !plan.aliases.is_empty() {
        println!("{} tables are another stage's (identical stages run once):", plan.aliases.len());
        for (alias, real) in &plan.aliases {
            println!("  {alias} = {real}");
        }
    }
}

/// What a run would do now: every stage that would run, with why, and how many are up to date.
fn print_preview(preview: &pipeline::Preview) {
    match preview {
        pipeline::Preview::NoRun(dir) => println!("what would run: everything (no run yet in {dir})"),
        pipeline::Preview::Stages(dir, stages) => {
            let runs: Vec<&(String, Option<String>)> = stages.iter().filter(|(_, why)| why.is_some()).collect();
            println!("what would run, against {dir}: {} of {} stages ({} up to date)", runs.len(), stages.len(), stages.len() - runs.len());
            for (name, why) in runs {
                println!("  {name:<48} {}", why.as_deref().unwrap_or_default());
            }
        }
    }
}

fn models_list() -> Result<ExitCode> {
    println!("{:<34} {:>9} {:>5} {:<12} {:>4} {:<9} {:<48} licence", "model", "input", "dim", "alignment", "year", "weights", "source");
    for card in crate::models::cards()? {
        let installed = if crate::models::weights_path(&card).is_ok() { "installed" } else { "missing" };
        let input = format!("{}x{}", card.input_size[0], card.input_size[1]);
        let weak = if card.weak { " (weak)" } else { "" };
        println!(
            "{:<34} {input:>9} {:>5} {:<12} {:>4} {installed:<9} {:<48} {}",
            format!("{}{weak}", card.id),
            card.output_dim,
            card.alignment,
            card.year.map_or("-".to_owned(), |y| y.to_string()),
            format!("{} {}", card.source.registry, card.source.package),
            card.licence
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn stages() -> Result<ExitCode> {
    let slots = |slots: &[pipeline::Slot]| slots.iter().map(|s| s.name).collect::<Vec<_>>();
    for k in KINDS {
        let optional = if k.optional_inputs.is_empty() { String::new() } else { format!(" (optional {:?})", slots(k.optional_inputs)) };
        println!("{:<10} {:?}{optional} -> {:?}\n           {}", k.name, slots(k.inputs), slots(k.outputs), k.summary);
    }
    Ok(ExitCode::SUCCESS)
}
