//! The `mkomi` command: a thin layer over the library that parses arguments, shows progress and
//! turns errors into one-line messages and exit codes. This file parses and dispatches; the
//! commands are in `cli/`, one file per group.

// Output goes through cli::common's macros only: println! and its kin panic on a closed pipe.
#![deny(clippy::disallowed_macros)]

mod cli;

use clap::Parser;
use cli::{
    Cli, Command, common, completions, export, generate, inspect, publish, register, store, verify,
};
use mkomi::progress::Progress;
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = Cli::parse();
    if cli.command.polls_cancel() {
        common::cancel_on_ctrl_c();
    }
    let progress = Progress::new(common::progress_mode(cli.quiet, cli.json));
    let json = cli.json;
    let code = match cli.command {
        Command::Register(a) => register::register(*a, &progress, json),
        Command::Build(a) => register::build(*a, &progress, json),
        Command::Verify(a) => verify::verify(a, &progress, json, cli.quiet),
        Command::Inspect(a) => inspect::inspect(a, json),
        Command::Audit(a) => inspect::audit(a, json),
        Command::Export(a) => export::export(*a, json),
        Command::Import(a) => export::import(*a, &progress, json),
        Command::Publish(a) => publish::publish(*a, &progress, json),
        Command::Pull(a) => publish::pull(*a, &progress, json),
        Command::Snapshot(cmd) => store::snapshot(cmd, cli.store, &progress, json),
        Command::Image(cmd) => store::image(cmd, cli.store, &progress, json),
        Command::Store(cmd) => store::maintain(cmd, cli.store, &progress, json),
        Command::Completions(a) => completions::completions(a),
        Command::Generate(cmd) => generate::generate(cmd),
    };
    common::output_written(code)
}
