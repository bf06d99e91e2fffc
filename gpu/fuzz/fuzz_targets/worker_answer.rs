//! What the agent reads from its GPU worker, the process that runs other people's shaders next to
//! the driver and so is not trusted: answer lines and the raw outputs after them, arriving in
//! arbitrary pieces. Nothing may panic, no answer may hold more output than allowed, and a
//! stream cut into pieces must give the same answers as the stream whole.
#![no_main]

use edge_jobs::worker::{Answer, take_answer};
use libfuzzer_sys::fuzz_target;

const MAX_OUTPUTS: u64 = 4096;

/// Every answer in `pieces` fed in order, until the first error.
fn answers<'a>(pieces: impl Iterator<Item = &'a [u8]>) -> (Vec<Answer>, bool) {
    let mut buf = Vec::new();
    let mut got = Vec::new();
    for piece in pieces {
        buf.extend_from_slice(piece);
        loop {
            match take_answer(&mut buf, MAX_OUTPUTS) {
                Ok(Some(answer)) => {
                    let bytes: usize = answer.outputs.iter().map(Vec::len).sum();
                    assert!(bytes as u64 <= MAX_OUTPUTS);
                    got.push(answer);
                }
                Ok(None) => break,
                Err(_) => return (got, true),
            }
        }
    }
    (got, false)
}

fuzz_target!(|data: &[u8]| {
    // The first byte picks the size of the pieces the rest arrives in.
    let Some((&size, stream)) = data.split_first() else {
        return;
    };
    let whole = answers(std::iter::once(stream));
    let pieces = answers(stream.chunks(usize::from(size).max(1)));
    assert_eq!(whole, pieces, "the same answers however the bytes arrive");
});
