//! `edge-gpu-worker`: the process the agent runs other people's GPU jobs in.
//!
//! ```text
//! edge-gpu-worker serve --blobs DIR   jobs on stdin, answers on stdout, until stdin closes
//! edge-gpu-worker hello               GPU discovery: the line `serve` starts with, then exit
//! ```
//!
//! It never opens the device's key or the agent's state; the agent signs receipts from its answers.

use std::path::PathBuf;
use std::process::ExitCode;

const USAGE: &str = "usage: edge-gpu-worker serve --blobs DIR | edge-gpu-worker hello";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["serve", "--blobs", dir] => {
            let store = edge_jobs::job::BlobStore {
                dir: PathBuf::from(dir),
            };
            if let Err(e) =
                edge_gpu::worker::serve(std::io::stdin().lock(), std::io::stdout().lock(), &store)
            {
                eprintln!("edge-gpu-worker: {e}");
            }
            // No teardown: a runaway dispatch may still hold the driver, and dropping the device
            // would wait for it.
            std::process::exit(0);
        }
        ["hello"] => match edge_gpu::worker::hello(std::io::stdout().lock()) {
            // Exit at once either way: the device is not torn down (see `serve`).
            Ok(_) => std::process::exit(0),
            Err(e) => {
                eprintln!("edge-gpu-worker: {e}");
                ExitCode::FAILURE
            }
        },
        _ => {
            eprintln!("{USAGE}");
            ExitCode::from(64)
        }
    }
}
