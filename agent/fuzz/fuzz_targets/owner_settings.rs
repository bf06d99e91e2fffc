//! The owner's settings as the agent takes them: a `ConfigSet` key and value from the app (the
//! input's first line and the rest), and an `owner.toml` of any content (the whole input: a file
//! a newer release wrote, or one torn by a power cut). A value the agent accepts is one it then
//! loads; and whatever `owner.toml` holds, the config still loads (the owner's file never stops
//! the agent), with what it left out listed.
#![no_main]

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use edge_agent::config::{load, owner_file, set_owner_key};
use libfuzzer_sys::fuzz_target;

struct Box {
    _dir: tempfile::TempDir,
    config: PathBuf,
    state: PathBuf,
}

fn a_box() -> &'static Box {
    static BOX: OnceLock<Box> = OnceLock::new();
    BOX.get_or_init(|| {
        let dir = tempfile::tempdir().expect("tempdir");
        let state = dir.path().join("state");
        std::fs::create_dir(&state).expect("state dir");
        let config = dir.path().join("config.toml");
        std::fs::write(&config, format!("[agent]\nstate_dir = {:?}\n", state.display().to_string()))
            .expect("config");
        Box {
            _dir: dir,
            config,
            state,
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let b = a_box();
    let cwd = Path::new("/");
    let owner = owner_file(&b.state);
    let text = String::from_utf8_lossy(data);

    let _ = std::fs::remove_file(&owner);
    let (key, value) = text.split_once('\n').unwrap_or((&text, ""));
    if let Ok(settings) = set_owner_key(Some(&b.config), cwd, &b.state, key, value) {
        std::fs::write(&owner, &settings).expect("write owner.toml");
        let config = load(Some(&b.config), cwd).expect("the config loads");
        assert!(
            config.owner_ignored.iter().all(|p| p.key.as_deref() != Some(key)),
            "{key} = {value} was accepted, then left out: {:?}",
            config.owner_ignored
        );
    }

    std::fs::write(&owner, data).expect("write owner.toml");
    load(Some(&b.config), cwd).expect("an owner.toml of any content never stops the agent");
});
