//! `edge-gpu-worker`: the process the agent runs other people's GPU jobs in.
//!
//! ```text
//! edge-gpu-worker serve --blobs DIR   jobs on stdin, answers on stdout, until stdin closes (a
//!                                     pipe, or the connection the box's socket unit passes)
//! edge-gpu-worker hello               GPU discovery: the line `serve` starts with, then exit
//! edge-gpu-worker sandbox --blobs DIR --probe FILE
//!                                     confined as `serve`, opens the device, then prints what it
//!                                     can and cannot do (JSON; FILE is one it must not read)
//! ```
//!
//! Every verb confines the process first ([`edge_gpu::sandbox`]); one that cannot be confined
//! serves nothing (its hello says why). It never opens the device's key or the agent's state; the
//! agent signs receipts from its answers.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use edge_gpu::sandbox::{self, Confined, Enforced, Places};
use edge_jobs::worker::{Hello, send};

const USAGE: &str = "usage: edge-gpu-worker serve --blobs DIR | edge-gpu-worker hello | \
                     edge-gpu-worker sandbox --blobs DIR --probe FILE";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let blobs = match args.as_slice() {
        ["serve", "--blobs", dir] | ["sandbox", "--blobs", dir, "--probe", _] => {
            Some(Path::new(dir))
        }
        ["hello"] => None,
        _ => {
            eprintln!("{USAGE}");
            return ExitCode::from(64);
        }
    };
    let confined =
        match sandbox::die_with_parent().and_then(|()| sandbox::confine(&Places::new(blobs))) {
            Ok(confined) => confined,
            Err(e) => {
                // Unconfined, it runs nothing: the agent reads this as "no GPU", with the reason.
                let reason = format!("the GPU worker cannot confine itself: {e}");
                let _ = send(&mut std::io::stdout().lock(), &Hello::NoGpu { reason });
                return ExitCode::FAILURE;
            }
        };
    let fully = Confined {
        landlock: Enforced::Fully,
        seccomp: Enforced::Fully,
    };
    if confined != fully {
        eprintln!(
            "edge-gpu-worker: not fully confined, this kernel lacks part of it: {confined:?}"
        );
    }
    match args.as_slice() {
        ["serve", "--blobs", dir] => {
            let store = edge_jobs::job::BlobStore {
                dir: PathBuf::from(dir),
            };
            // A connection from the agent (the box's socket unit) or pipes (a build tree): when
            // the agent hangs up, the worker goes, even while a dispatch holds this thread.
            sandbox::exit_when_hung_up();
            if let Err(e) = edge_gpu::worker::serve(
                std::io::stdin().lock(),
                std::io::stdout().lock(),
                &store,
                confined,
            ) {
                eprintln!("edge-gpu-worker: {e}");
            }
            // No teardown: a runaway dispatch may still hold the driver, and dropping the device
            // would wait for it.
            std::process::exit(0);
        }
        ["sandbox", "--blobs", _, "--probe", probe] => {
            // With the device open, as when serving: its threads run under the same rules.
            let gpu = edge_gpu::worker::hello(std::io::sink());
            let report = sandbox::report(confined, Path::new(probe));
            println!("{}", serde_json::to_string(&report).unwrap_or_default());
            std::mem::forget(gpu);
            std::process::exit(0);
        }
        _ => match edge_gpu::worker::hello(std::io::stdout().lock()) {
            // Exit at once either way: the device is not torn down (see `serve`).
            Ok(_) => std::process::exit(0),
            Err(e) => {
                eprintln!("edge-gpu-worker: {e}");
                ExitCode::FAILURE
            }
        },
    }
}
