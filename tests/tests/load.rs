//! The object loads, both programs pass the verifier, and a monitored request is counted.

use monitor_common::stats::Stat;
use tests::{frames::Frame, harness::*};

#[test]
fn both_programs_load_and_count_a_request() {
    let mut k = Loaded::new(config_with_limit(100, 10));
    for hook in HOOKS {
        assert_eq!(
            k.run(hook, &Frame::request("198.51.100.7", LOOKUP_PORT).build()),
            Verdict::Pass
        );
    }
    assert_eq!(k.stat(Stat::Requests), 2);
    assert_eq!(k.stat(Stat::Passed), 2);
}
