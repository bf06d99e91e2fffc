//! Every hub reply the agent parses (registration, report verdicts, info, a job offer, an IP echo,
//! an upload's count, an error body): a hub, or whoever answers in its place, chooses these bytes.
//! Parsing must be total; a job offer's job is then checked as the agent checks it before
//! queueing (its digest and input digest, which walk every binding).
#![no_main]

use edge_protocol::api::{ApiError, BatchReply, HubInfo, IpEcho, JobOffer, Registered, Uploaded};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = serde_json::from_slice::<Registered>(data);
    let _ = serde_json::from_slice::<BatchReply>(data);
    let _ = serde_json::from_slice::<HubInfo>(data);
    let _ = serde_json::from_slice::<IpEcho>(data);
    let _ = serde_json::from_slice::<Uploaded>(data);
    let _ = serde_json::from_slice::<ApiError>(data);
    if let Ok(offer) = serde_json::from_slice::<JobOffer>(data) {
        // Sizes are the job's claim: only small ones are hashed here (the agent refuses a job
        // over its budget before anything is allocated).
        if offer.job.bindings.iter().map(|b| b.size).sum::<u64>() <= 1 << 20 {
            let _ = offer.job.input_sha256();
        }
    }
});
