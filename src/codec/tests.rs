use super::encode::{write_event_time, write_message};
use super::forward::write_ack;
use super::*;
use crate::event::{Event, EventTime};
use bytes::{Bytes, BytesMut};
use flate2::{Compression, write::GzEncoder};
use proptest::prelude::*;
use serde_json::{Value, json};
use std::io::Write;

fn record(value: Value) -> Bytes {
    Bytes::from(rmp_serde::to_vec(&value).unwrap())
}

fn decode_all(bytes: &[u8], opts: &DecodeOptions) -> Result<Vec<Message>, DecodeError> {
    let mut buf = BytesMut::from(bytes);
    let mut decoder = Decoder::new(usize::MAX, opts.max_depth);
    let mut out = Vec::new();
    while let Some(frame) = decoder.next_frame(&mut buf)? {
        out.extend(decode_message(&frame, opts)?);
    }
    assert!(buf.is_empty(), "{} bytes left over", buf.len());
    Ok(out)
}

fn decode_one(bytes: &[u8]) -> Result<Message, DecodeError> {
    let mut all = decode_all(bytes, &DecodeOptions::default())?;
    assert_eq!(all.len(), 1);
    Ok(all.remove(0))
}

fn as_json(record: &Bytes) -> Value {
    rmp_serde::from_slice(record).unwrap()
}

fn msgpack(value: &impl serde::Serialize) -> Vec<u8> {
    rmp_serde::to_vec(value).unwrap()
}

/// `[tag, <time bytes>, record, option?]` with the time written by hand.
fn message_with_time(time: &[u8], rec: &Value, option: Option<&Value>) -> Vec<u8> {
    let mut out = vec![if option.is_some() { 0x94 } else { 0x93 }];
    out.extend(msgpack(&"app.log"));
    out.extend_from_slice(time);
    out.extend(msgpack(rec));
    if let Some(option) = option {
        out.extend(msgpack(option));
    }
    out
}

#[test]
fn message_mode_with_every_time_form() {
    let rec = json!({"msg": "hi"});
    let mut event_time = Vec::new();
    write_event_time(&mut event_time, EventTime::new(1_700_000_000, 123_456_789));
    let cases: Vec<(Vec<u8>, EventTime)> = vec![
        (msgpack(&1_700_000_000u32), EventTime::new(1_700_000_000, 0)),
        (
            msgpack(&1_700_000_000.25f64),
            EventTime::new(1_700_000_000, 250_000_000),
        ),
        (
            event_time.clone(),
            EventTime::new(1_700_000_000, 123_456_789),
        ),
    ];
    for (time, want) in cases {
        let msg = decode_one(&message_with_time(&time, &rec, None)).unwrap();
        assert_eq!(msg.mode, Mode::Message);
        assert_eq!(msg.tag_str(), "app.log");
        assert_eq!(msg.events.len(), 1);
        assert_eq!(msg.events[0].time, want);
        assert_eq!(as_json(&msg.events[0].record), rec);
        assert_eq!(msg.chunk, None);
    }
}

#[test]
fn fluent_bit_metadata_entries_keep_their_event_time() {
    // Fluent Bit >= 2 forwards [[EventTime, metadata], record] entries.
    let mut entry = vec![0x92, 0x92];
    write_event_time(&mut entry, EventTime::new(1_700_000_000, 42));
    entry.extend(msgpack(&json!({"otlp": {}})));
    entry.extend(msgpack(&json!({"log": "x"})));
    let mut out = vec![0x93];
    out.extend(msgpack(&"fb"));
    out.push(0x91);
    out.extend_from_slice(&entry);
    out.extend(msgpack(&json!({"fluent_signal": 0, "chunk": "k"})));
    let msg = decode_one(&out).unwrap();
    assert_eq!(msg.mode, Mode::Forward);
    assert_eq!(msg.events[0].time, EventTime::new(1_700_000_000, 42));
    assert_eq!(as_json(&msg.events[0].record), json!({"log": "x"}));
}

#[test]
fn zero_and_nil_times_become_now() {
    let before = EventTime::now();
    for time in [msgpack(&0u8), msgpack(&())] {
        let msg = decode_one(&message_with_time(&time, &json!({"a": 1}), None)).unwrap();
        assert!(msg.events[0].time >= before);
    }
}

#[test]
fn message_mode_chunk_option_is_returned_for_the_ack() {
    let option = json!({"chunk": "p8n9gmxTQVC8/nh2wlKKeQ==", "unknown": [1, 2]});
    let msg = decode_one(&message_with_time(
        &msgpack(&5u8),
        &json!({}),
        Some(&option),
    ))
    .unwrap();
    assert_eq!(msg.chunk.as_deref(), Some(&b"p8n9gmxTQVC8/nh2wlKKeQ=="[..]));
    let mut ack = Vec::new();
    write_ack(&mut ack, msg.chunk.as_deref().unwrap());
    let parsed: std::collections::HashMap<String, String> = rmp_serde::from_slice(&ack).unwrap();
    assert_eq!(parsed["ack"], "p8n9gmxTQVC8/nh2wlKKeQ==");
}

fn sample_events(n: usize) -> Vec<Event> {
    (0..n)
        .map(|i| Event {
            time: EventTime::new(1_700_000_000 + i as i64, i as u32),
            record: record(json!({"seq": i, "msg": format!("line {i}")})),
        })
        .collect()
}

#[test]
fn every_packing_round_trips_with_ack_id() {
    let events = sample_events(50);
    for packing in [
        Mode::Message,
        Mode::Forward,
        Mode::PackedForward,
        Mode::CompressedPackedForward,
    ] {
        let mut out = Vec::new();
        write_message(&mut out, packing, "a.b", &events, Some("chunk-1"));
        let msgs = decode_all(&out, &DecodeOptions::default()).unwrap();
        let decoded: Vec<Event> = msgs.iter().flat_map(|m| m.events.clone()).collect();
        assert_eq!(decoded, events, "{packing:?}");
        assert!(
            msgs.iter()
                .all(|m| m.chunk.as_deref() == Some(&b"chunk-1"[..]))
        );
        assert!(msgs.iter().all(|m| m.size_mismatch.is_none()));
        assert_eq!(msgs[0].mode, packing);
    }
}

#[test]
fn packed_entries_as_str_and_concatenated_gzip_members() {
    let events = sample_events(10);
    let mut entries = Vec::new();
    for event in &events {
        entries.push(0x92);
        write_event_time(&mut entries, event.time);
        entries.extend_from_slice(&event.record);
    }
    // Older clients send the entries as str.
    let mut out = vec![0x92];
    out.extend(msgpack(&"t"));
    rmp::encode::write_str_len(&mut out, entries.len() as u32).unwrap();
    out.extend_from_slice(&entries);
    assert_eq!(decode_one(&out).unwrap().events, events);

    // Two gzip members, split between events 4 and 5.
    let split = {
        let mut probe = Vec::new();
        for event in &events[..4] {
            probe.push(0x92);
            write_event_time(&mut probe, event.time);
            probe.extend_from_slice(&event.record);
        }
        probe.len()
    };
    let mut gz = Vec::new();
    for part in [&entries[..split], &entries[split..]] {
        let mut enc = GzEncoder::new(Vec::new(), Compression::default());
        enc.write_all(part).unwrap();
        gz.extend(enc.finish().unwrap());
    }
    let mut out = vec![0x93];
    out.extend(msgpack(&"t"));
    rmp::encode::write_bin(&mut out, &gz).unwrap();
    out.extend(msgpack(&json!({"compressed": "gzip", "size": 10})));
    let msg = decode_one(&out).unwrap();
    assert_eq!(msg.mode, Mode::CompressedPackedForward);
    assert_eq!(msg.events, events);
}

#[test]
fn zstd_compressed_entries_in_several_frames() {
    let events = sample_events(20);
    let mut frames = Vec::new();
    for part in events.chunks(7) {
        let mut entries = Vec::new();
        for event in part {
            entries.push(0x92);
            write_event_time(&mut entries, event.time);
            entries.extend_from_slice(&event.record);
        }
        frames.extend(ruzstd::encoding::compress_to_vec(
            &entries[..],
            ruzstd::encoding::CompressionLevel::Fastest,
        ));
    }
    let mut out = vec![0x93];
    out.extend(msgpack(&"z"));
    rmp::encode::write_bin(&mut out, &frames).unwrap();
    out.extend(msgpack(&json!({"compressed": "zstd", "size": 20})));
    let msg = decode_one(&out).unwrap();
    assert_eq!(msg.mode, Mode::CompressedPackedForward);
    assert_eq!(msg.events, events);
    assert_eq!(msg.size_mismatch, None);

    let mut bad = vec![0x93];
    bad.extend(msgpack(&"z"));
    rmp::encode::write_bin(&mut bad, b"\x28\xb5\x2f\xfd garbage").unwrap();
    bad.extend(msgpack(&json!({"compressed": "zstd"})));
    assert!(matches!(decode_one(&bad), Err(DecodeError::Zstd(_))));
}

#[test]
fn zstd_bomb_stops_at_decompression_size_limit() {
    let zeros = vec![0u8; 8 * 1024 * 1024];
    let compressed =
        ruzstd::encoding::compress_to_vec(&zeros[..], ruzstd::encoding::CompressionLevel::Fastest);
    let mut out = vec![0x93];
    out.extend(msgpack(&"t"));
    rmp::encode::write_bin(&mut out, &compressed).unwrap();
    out.extend(msgpack(&json!({"compressed": "zstd"})));
    let opts = DecodeOptions {
        decompression_size_limit: 1024 * 1024,
        ..DecodeOptions::default()
    };
    assert!(matches!(
        decode_all(&out, &opts),
        Err(DecodeError::DecompressedTooLarge(1_048_576))
    ));
}

#[test]
fn size_option_mismatch_is_reported() {
    let events = sample_events(3);
    let mut out = Vec::new();
    write_message(&mut out, Mode::PackedForward, "t", &events, None);
    // Patch "size": 3 to 5: the value is the byte after the "size" key.
    let pos = out.windows(5).position(|w| w == b"size\x03").unwrap();
    out[pos + 4] = 5;
    let msg = decode_one(&out).unwrap();
    assert_eq!(msg.events.len(), 3);
    assert_eq!(msg.size_mismatch, Some((5, 3)));
}

#[test]
fn messages_split_at_every_byte_boundary() {
    let mut stream = Vec::new();
    write_message(&mut stream, Mode::Message, "x", &sample_events(3), None);
    write_message(
        &mut stream,
        Mode::PackedForward,
        "y",
        &sample_events(3),
        Some("c"),
    );
    for split in 0..stream.len() {
        let mut decoder = Decoder::new(usize::MAX, 64);
        let mut buf = BytesMut::from(&stream[..split]);
        let mut frames = Vec::new();
        while let Some(frame) = decoder.next_frame(&mut buf).unwrap() {
            frames.push(frame);
        }
        buf.extend_from_slice(&stream[split..]);
        while let Some(frame) = decoder.next_frame(&mut buf).unwrap() {
            frames.push(frame);
        }
        assert_eq!(frames.len(), 4, "split at {split}");
        assert!(buf.is_empty());
    }
}

#[test]
fn invalid_events_are_skipped_and_the_rest_kept() {
    // Forward mode: good, time is a string, record is an array, entry is a number, good.
    let entries = json!([
        [1, {"n": 1}],
        ["yesterday", {"n": 2}],
        [3, [1, 2]],
        7,
        [5, {"n": 5}],
    ]);
    let mut out = vec![0x93];
    out.extend(msgpack(&"t"));
    out.extend(msgpack(&entries));
    out.extend(msgpack(&json!({"chunk": "c1"})));
    let msg = decode_one(&out).unwrap();
    let seqs: Vec<Value> = msg
        .events
        .iter()
        .map(|e| as_json(&e.record)["n"].clone())
        .collect();
    assert_eq!(seqs, vec![json!(1), json!(5)]);
    assert_eq!(msg.skipped, 3);
    assert_eq!(
        msg.first_skip,
        Some(InvalidEvent::Time("a string")),
        "first reason kept"
    );
    assert_eq!(msg.chunk.as_deref(), Some(&b"c1"[..]), "still acked");

    let strict = DecodeOptions {
        skip_invalid_event: false,
        ..DecodeOptions::default()
    };
    assert!(matches!(
        decode_all(&out, &strict),
        Err(DecodeError::InvalidEvent(InvalidEvent::Time(_)))
    ));
}

#[test]
fn nil_record_is_dropped_silently() {
    let msg = decode_one(&message_with_time(&msgpack(&1u8), &Value::Null, None)).unwrap();
    assert!(msg.events.is_empty());
    assert_eq!(msg.skipped, 0);
}

#[test]
fn malformed_messages_are_typed_errors() {
    let opts = DecodeOptions::default();
    type Check = fn(&DecodeError) -> bool;
    let cases: Vec<(Vec<u8>, Check)> = vec![
        (msgpack(&json!({"a": 1})), |e| {
            matches!(e, DecodeError::NotAnArray("a map"))
        }),
        (msgpack(&json!(["t"])), |e| {
            matches!(e, DecodeError::Arity(1))
        }),
        (msgpack(&json!(["t", 1, {}, {}, 5])), |e| {
            matches!(e, DecodeError::Arity(5))
        }),
        (msgpack(&json!([42, 1, {}])), |e| {
            matches!(e, DecodeError::TagNotString("an integer"))
        }),
        (msgpack(&json!(["t", 1])), |e| {
            matches!(e, DecodeError::Arity(2))
        }),
        (vec![0x93, 0xa1, 0xff, 0x01, 0x80], |e| {
            matches!(e, DecodeError::TagNotUtf8)
        }),
        (b"{\"tag\":1}".to_vec(), |e| {
            matches!(e, DecodeError::JsonStream('{'))
        }),
        (vec![0x93, 0xc1], |e| {
            matches!(
                e,
                DecodeError::Msgpack(msgpack::MsgpackError::ReservedMarker(1))
            )
        }),
        (vec![0x91; 200], |e| {
            matches!(e, DecodeError::Msgpack(msgpack::MsgpackError::TooDeep(64)))
        }),
    ];
    for (bytes, check) in cases {
        let err = decode_all(&bytes, &opts).unwrap_err();
        assert!(check(&err), "{bytes:?} gave {err:?}");
    }
}

#[test]
fn broken_packed_entries_and_bad_gzip_fail_the_message() {
    let mut out = vec![0x92];
    out.extend(msgpack(&"t"));
    rmp::encode::write_bin(&mut out, &[0x92, 0x01, 0x82, 0xa1]).unwrap();
    assert!(matches!(
        decode_one(&out),
        Err(DecodeError::BrokenEntries(_))
    ));

    let mut out = vec![0x93];
    out.extend(msgpack(&"t"));
    rmp::encode::write_bin(&mut out, b"\x1f\x8b\x08\x00not gzip at all").unwrap();
    out.extend(msgpack(&json!({"compressed": "gzip"})));
    assert!(matches!(decode_one(&out), Err(DecodeError::Gzip(_))));

    let mut out = vec![0x93];
    out.extend(msgpack(&"t"));
    rmp::encode::write_bin(&mut out, b"x").unwrap();
    out.extend(msgpack(&json!({"compressed": "lz4"})));
    assert!(matches!(decode_one(&out), Err(DecodeError::UnsupportedCompression(c)) if c == "lz4"));
}

#[test]
fn gzip_bomb_stops_at_decompression_size_limit() {
    let mut enc = GzEncoder::new(Vec::new(), Compression::best());
    enc.write_all(&vec![0u8; 8 * 1024 * 1024]).unwrap();
    let gz = enc.finish().unwrap();
    assert!(gz.len() < 64 * 1024);
    let mut out = vec![0x93];
    out.extend(msgpack(&"t"));
    rmp::encode::write_bin(&mut out, &gz).unwrap();
    out.extend(msgpack(&json!({"compressed": "gzip"})));
    let opts = DecodeOptions {
        decompression_size_limit: 1024 * 1024,
        ..DecodeOptions::default()
    };
    assert!(matches!(
        decode_all(&out, &opts),
        Err(DecodeError::DecompressedTooLarge(1_048_576))
    ));
}

#[test]
fn declared_length_beyond_limit_fails_before_it_arrives() {
    // A PackedForward whose bin32 declares 1 GiB, with only a few bytes sent.
    let mut out = vec![0x92];
    out.extend(msgpack(&"t"));
    out.extend_from_slice(&[0xc6, 0x40, 0x00, 0x00, 0x00, 1, 2, 3]);
    let mut decoder = Decoder::new(8 * 1024 * 1024, 64);
    let mut buf = BytesMut::from(&out[..]);
    let err = decoder.next_frame(&mut buf).unwrap_err();
    assert!(
        matches!(
            err,
            DecodeError::TooLarge {
                limit: 8_388_608,
                ..
            }
        ),
        "{err:?}"
    );
    // And a huge declared array count just waits for data without allocating.
    let mut decoder = Decoder::new(8 * 1024 * 1024, 64);
    let mut buf = BytesMut::from(&[0x93, 0xa1, b't', 0xdd, 0xff, 0xff, 0xff, 0xff][..]);
    assert!(decoder.next_frame(&mut buf).unwrap().is_none());
}

#[test]
fn nil_message_is_ignored() {
    assert!(
        decode_all(&[0xc0], &DecodeOptions::default())
            .unwrap()
            .is_empty()
    );
}

fn arb_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        (-1e12f64..1e12).prop_map(Value::from),
        ".{0,40}".prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::from),
            prop::collection::btree_map("[a-z_]{1,8}", inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn arb_event() -> impl Strategy<Value = (EventTime, Value)> {
    (
        (1u32..u32::MAX, 0u32..1_000_000_000),
        prop::collection::btree_map("[a-z_]{1,12}", arb_value(), 0..8),
    )
        .prop_map(|((secs, nanos), map)| {
            (
                EventTime::new(i64::from(secs), nanos),
                Value::Object(map.into_iter().collect()),
            )
        })
}

proptest! {
    #[test]
    fn random_events_round_trip_in_every_mode(
        events in prop::collection::vec(arb_event(), 1..20),
        tag in "[a-z]{1,8}(\\.[a-z]{1,8}){0,3}",
        chunk in proptest::option::of("[A-Za-z0-9+/=]{1,24}"),
        mode in 0usize..4,
        split in any::<prop::sample::Index>(),
    ) {
        let packing = [Mode::Message, Mode::Forward, Mode::PackedForward,
            Mode::CompressedPackedForward][mode];
        let built: Vec<Event> = events.iter()
            .map(|(time, rec)| Event { time: *time, record: record(rec.clone()) })
            .collect();
        let mut stream = Vec::new();
        write_message(&mut stream, packing, &tag, &built, chunk.as_deref());
        // Deliver in two reads split at a random point.
        let at = split.index(stream.len());
        let mut decoder = Decoder::new(usize::MAX, 64);
        let mut buf = BytesMut::from(&stream[..at]);
        let mut msgs = Vec::new();
        while let Some(frame) = decoder.next_frame(&mut buf).unwrap() {
            msgs.extend(decode_message(&frame, &DecodeOptions::default()).unwrap());
        }
        buf.extend_from_slice(&stream[at..]);
        while let Some(frame) = decoder.next_frame(&mut buf).unwrap() {
            msgs.extend(decode_message(&frame, &DecodeOptions::default()).unwrap());
        }
        let got: Vec<(EventTime, Value)> = msgs.iter()
            .flat_map(|m| m.events.iter().map(|e| (e.time, as_json(&e.record))))
            .collect();
        prop_assert_eq!(got, events);
        for msg in &msgs {
            prop_assert_eq!(msg.tag_str(), tag.as_str());
            prop_assert_eq!(msg.chunk.as_deref(), chunk.as_deref().map(str::as_bytes));
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let mut decoder = Decoder::new(1 << 20, 64);
        let mut buf = BytesMut::from(&bytes[..]);
        while let Ok(Some(frame)) = decoder.next_frame(&mut buf) {
            let _ = decode_message(&frame, &DecodeOptions::default());
        }
    }
}

#[test]
fn set_field_adds_or_replaces_a_key() {
    let rec = record(json!({"a": 1, "host": "old", "b": [1]}));
    let out = set_field(&rec, "host", "10.0.0.1").unwrap();
    assert_eq!(as_json(&out), json!({"a": 1, "b": [1], "host": "10.0.0.1"}));
    let out = set_field(&record(json!({})), "k", "v").unwrap();
    assert_eq!(as_json(&out), json!({"k": "v"}));
}
