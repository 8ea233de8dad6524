//! How disk images are opened: the one place the command line turns into the library's open
//! options (`--allow-backing`, `--input-format`).

use mkomi::format::{BackingPolicy, InputFormat, OpenOptions};
use std::path::PathBuf;

/// How disk images are opened: backing files and format (every command that reads one).
#[derive(clap::Args)]
pub struct OpenArgs {
    /// Follow a qcow2 backing file found inside DIR (repeatable); without it, an image that
    /// names a backing file is refused.
    #[arg(long, value_name = "DIR")]
    allow_backing: Vec<PathBuf>,
    /// The format of the disk images: auto (the content of a regular file tells; a block
    /// device is raw), raw, or qcow2.
    #[arg(long, value_enum, value_name = "FORMAT", default_value = "auto")]
    input_format: InputFormat,
}

impl OpenArgs {
    /// The library's options.
    pub fn options(&self) -> OpenOptions {
        OpenOptions::new(
            self.input_format,
            BackingPolicy::within(self.allow_backing.clone()),
        )
    }

    /// The options given (not at their defaults), as named on the command line.
    pub fn given(&self) -> Vec<&'static str> {
        let mut out = Vec::new();
        if !self.allow_backing.is_empty() {
            out.push("--allow-backing");
        }
        if self.input_format != InputFormat::Auto {
            out.push("--input-format");
        }
        out
    }
}
