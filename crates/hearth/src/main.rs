//! The `hearth` binary: parses the command line and runs the agent or a client command.

mod cli;
mod client;

use std::process::ExitCode;

fn main() -> ExitCode {
    cli::main()
}
