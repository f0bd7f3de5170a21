//! Any config text: parsed and validated or refused with a message, and a
//! parsed one yields a policy and an open-relay verdict, never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match portcullis::config::Config::parse(text, "fuzz") {
        Ok(config) => {
            let _ = config.findings();
            let policy = portcullis::policy::Policy::from_config(&config);
            let _ = policy.networks.describe();
            let _ = portcullis::config::open_relay_entries(&config);
        }
        Err(e) => assert!(!e.to_string().is_empty()),
    }
});
