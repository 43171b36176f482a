//! The `hearth` binary: parses the command line and runs the agent or a client command.

mod accounts_cli;
mod backups_cli;
mod billing_cli;
mod cli;
mod client;
mod compute_cli;
mod console_cli;
mod doctor;
mod init;
mod output;
mod plans_cli;
mod restore_cli;
mod signup_cli;
mod state_cli;
mod zones_cli;

use std::process::ExitCode;

fn main() -> ExitCode {
    cli::main()
}
