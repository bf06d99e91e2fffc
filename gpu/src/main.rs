//! `edge-gpu-worker`: the process the agent runs other people's GPU jobs in.
//!
//!     edge-gpu-worker serve --blobs DIR   jobs on stdin, answers on stdout, until stdin closes
//!     edge-gpu-worker probe               GPU discovery: one JSON line, then exit
//!
//! It never opens the device's key or the agent's state; the agent signs receipts from its answers.

use std::path::PathBuf;
use std::process::ExitCode;

const USAGE: &str = "usage: edge-gpu-worker serve --blobs DIR | edge-gpu-worker probe";

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
        ["probe"] => {
            let status = edge_gpu::discover::WgpuProbe::default().discover();
            match serde_json::to_string(&status) {
                Ok(line) => {
                    println!("{line}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("edge-gpu-worker: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        _ => {
            eprintln!("{USAGE}");
            ExitCode::from(64)
        }
    }
}
