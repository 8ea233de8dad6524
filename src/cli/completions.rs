//! `completions`: the shell completion scripts clap_complete makes from the grammar.

use super::Cli;
use super::common::out;
use clap::CommandFactory;
use std::process::ExitCode;

/// `completions`' arguments.
#[derive(clap::Args)]
#[command(after_help = "Example:\n  mkomi completions bash > /etc/bash_completion.d/mkomi")]
pub struct CompletionsArgs {
    /// The shell.
    shell: clap_complete::Shell,
}

/// `mkomi completions SHELL`.
pub fn completions(a: CompletionsArgs) -> ExitCode {
    out!("{}", String::from_utf8_lossy(&script(a.shell)));
    ExitCode::SUCCESS
}

/// `shell`'s completion script for the whole grammar (hidden commands left out).
pub fn script(shell: clap_complete::Shell) -> Vec<u8> {
    // Made in memory: clap_complete panics when it cannot write.
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "mkomi", &mut script);
    script
}
