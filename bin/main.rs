//! kbox: run unmodified Linux programs from an ext4 image, rootless, on an in-process
//! Linux kernel. This file only parses the command line, reports errors and exits.

mod cli;
mod dispatch;
mod error;
mod exit;
mod image;
mod image_lock;
// The in-process tiers' loader.
mod loader;
mod network;
mod runtime;
mod seccomp;
mod tiers;

use std::io::{self, Write};
use std::process::ExitCode;

use cli::Invocation;
use error::{Error, Report};
use exit::Exit;

fn main() -> ExitCode {
    let exit = match run(std::env::args_os().skip(1)) {
        Ok(exit) => exit,
        Err(error) => {
            // Nothing useful is left to do if stderr itself cannot be written.
            let _ = writeln!(io::stderr().lock(), "{}", Report(&error));
            Exit::KboxError
        }
    };
    exit.into()
}

fn run(args: impl Iterator<Item = std::ffi::OsString>) -> Result<Exit, Error> {
    let args: Vec<std::ffi::OsString> = args.collect();
    // `kbox image ...` builds images; anything else runs a guest.
    if args.first().is_some_and(|a| a == "image") {
        return image::main(&args[1..]).map_err(Error::ImageBuild);
    }
    let config = match cli::parse(args)? {
        Invocation::Help => return print_stdout(cli::USAGE).map(|()| Exit::Done),
        Invocation::Version => {
            let version = concat!("kbox ", env!("CARGO_PKG_VERSION"), "\n");
            return print_stdout(version).map(|()| Exit::Done);
        }
        Invocation::Run(config) => *config,
    };
    let access = cli::check_host(&config)?;
    if let Some(warning) = access.warning(&config.image) {
        let _ = writeln!(io::stderr().lock(), "kbox: {warning}");
    }
    let read_only = matches!(access, cli::ImageAccess::ReadOnly(_));
    runtime::run(&config, read_only).map_err(Error::Runtime)
}

fn print_stdout(text: &str) -> Result<(), Error> {
    let mut out = io::stdout().lock();
    out.write_all(text.as_bytes())
        .and_then(|()| out.flush())
        .map_err(Error::WriteStdout)
}
