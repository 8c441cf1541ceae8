//! Arbitrary bytes into the decoder: it must answer Ok or a reason, never panic,
//! and whatever it accepts must survive a round trip through JSON.
#![no_main]

use libfuzzer_sys::fuzz_target;
use referral_router::decode::decode_structured;

fuzz_target!(|data: &[u8]| {
    if let Ok(event) = decode_structured(data) {
        let again = serde_json::to_vec(&serde_json::json!({
            "specversion": "1.0",
            "id": event.id,
            "source": event.source,
            "type": event.event_type.as_str(),
            "time": event.time,
            "data": event.data,
        }))
        .expect("a decoded event serializes");
        let twice = decode_structured(&again).expect("a decoded event decodes again");
        assert_eq!(twice.data, event.data);
    } else if let Err(e) = decode_structured(data) {
        assert!(!e.to_string().is_empty());
    }
});
