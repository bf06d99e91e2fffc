//! The worker's request line, as the worker reads it from the agent: a batch of jobs, or a sandbox
//! probe. The agent builds the line, but the worker must hold whatever arrives on its socket.
#![no_main]

use edge_jobs::worker::{Request, SandboxProbe, take_line};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // One line, as the worker reads it (its end is the newline).
    let line = || {
        let mut line = data.to_vec();
        line.push(b'\n');
        line
    };
    let _ = take_line::<SandboxProbe>(&mut line());
    if let Ok(Some(request)) = take_line::<Request>(&mut line()) {
        for submitted in &request.jobs {
            let _ = edge_jobs::check::output_bytes(&submitted.job);
            let _ = edge_jobs::check::gpu_bytes(&submitted.job);
        }
    }
});
