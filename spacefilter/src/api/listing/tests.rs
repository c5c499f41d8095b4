use super::*;
use crate::api::ErrorKind;

fn sample() -> Vec<EntryRef<'static>> {
    let entry = |list, prefix: &str, origin, comment, expires_in_secs, hits| EntryRef {
        list,
        prefix: prefix.parse().unwrap(),
        origin,
        comment,
        expires_in_secs,
        hits,
    };
    vec![
        entry(List::Allow, "2001:db8::/32", Origin::Config, None, None, 0),
        entry(List::Allow, "0.0.0.0/0", Origin::Manual, None, None, 1),
        entry(
            List::Block,
            "198.18.0.7",
            Origin::Manual,
            Some("a \"quoted\" note, with \\, \u{7} and \u{e9}"),
            Some(3600),
            u64::MAX,
        ),
        entry(
            List::Block,
            "255.255.255.0/24",
            Origin::File,
            None,
            Some(0),
            10,
        ),
        entry(
            List::Block,
            "2001:db8:0:1::/64",
            Origin::File,
            None,
            None,
            7,
        ),
        entry(
            List::Auto,
            "198.18.0.0/24",
            Origin::Auto,
            Some(""),
            Some(9),
            12,
        ),
    ]
}

/// The reply as the daemon streams it.
fn streamed(entries: &[EntryRef<'_>]) -> Vec<u8> {
    let mut out = ENTRIES_HEAD.to_vec();
    for (i, e) in entries.iter().enumerate() {
        if i > 0 {
            out.push(ENTRIES_SEPARATOR);
        }
        e.write_json(&mut out);
    }
    out.extend_from_slice(ENTRIES_TAIL);
    out
}

/// A reader that gives its bytes a few at a time, as a socket may.
struct Trickle<'a>(&'a [u8], usize);

impl Read for Trickle<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.1.min(self.0.len()).min(buf.len());
        buf[..n].copy_from_slice(&self.0[..n]);
        self.0 = &self.0[n..];
        Ok(n)
    }
}

fn collect(listed: Result<Listed, ReadError>, seen: &[String]) -> (u64, usize) {
    match listed {
        Ok(Listed::Entries(n)) => (n, seen.len()),
        other => panic!("{other:?}"),
    }
}

/// Each entry written by hand is, byte for byte, what serde writes for
/// it and for its view; the whole reply is the `Response::Entries` it
/// always was.
#[test]
fn a_streamed_listing_is_the_reply_it_always_was() {
    for e in sample() {
        let mut fast = Vec::new();
        e.write_json(&mut fast);
        let view = EntryView::from(e);
        assert_eq!(
            String::from_utf8(fast.clone()),
            String::from_utf8(serde_json::to_vec(&view).unwrap())
        );
        assert_eq!(fast, serde_json::to_vec(&e).unwrap());
        // What the client reads back serializes as the view did.
        let text: EntryText<'_> = serde_json::from_slice(&fast).unwrap();
        assert_eq!(serde_json::to_vec(&text).unwrap(), fast);
    }
    for entries in [sample(), Vec::new()] {
        let views: Vec<EntryView> = entries.iter().map(|&e| e.into()).collect();
        let mut whole = serde_json::to_vec(&Response::Entries { entries: views }).unwrap();
        whole.push(b'\n');
        assert_eq!(
            String::from_utf8(streamed(&entries)),
            String::from_utf8(whole)
        );
    }
}

/// However the reply arrives, in one piece or a byte at a time, every
/// entry is read, in order, as it was written.
#[test]
fn entries_are_read_as_they_arrive() {
    let entries = sample();
    let expected: Vec<String> = entries
        .iter()
        .map(|e| serde_json::to_string(e).unwrap())
        .collect();
    let reply = streamed(&entries);
    for step in [1, 2, 3, 7, 64, reply.len()] {
        for split in [0, 5, ENTRIES_HEAD.len() + 3] {
            let mut seen = Vec::new();
            let listed = read_streamed(
                &mut Trickle(&reply[split..], step),
                reply[..split].to_vec(),
                &mut |e, json| {
                    let written = serde_json::to_string(e).unwrap();
                    if let Some(json) = json {
                        assert_eq!(json, written.as_bytes());
                    }
                    seen.push(written);
                    Ok(())
                },
            );
            assert_eq!(
                collect(listed, &seen),
                (entries.len() as u64, entries.len())
            );
            assert_eq!(seen, expected, "step {step}, split {split}");
        }
    }
    // The whole line, read by the general parser, gives the same.
    let mut seen = Vec::new();
    let listed = read_reply(&reply, &mut |e, _| {
        seen.push(serde_json::to_string(e).unwrap());
        Ok(())
    });
    assert!(matches!(listed, Ok(Listed::Entries(6))));
    assert_eq!(seen, expected);
    // No entries at all.
    let empty = streamed(&[]);
    let listed = read_streamed(&mut Trickle(&empty, 2), Vec::new(), &mut |_, _| {
        panic!("no entries")
    });
    assert_eq!(collect(listed, &[]), (0, 0));
}

#[test]
fn another_reply_is_read_whole() {
    let error = Response::Error {
        kind: ErrorKind::Failed,
        message: "no".into(),
    };
    let mut line = serde_json::to_vec(&error).unwrap();
    line.push(b'\n');
    for step in [1, 100] {
        let listed = read_streamed(&mut Trickle(&line, step), Vec::new(), &mut |_, _| {
            panic!("no entries here")
        });
        assert!(
            matches!(listed, Ok(Listed::Other(ref r)) if **r == error),
            "{listed:?}"
        );
    }
    let listed = read_reply(&line, &mut |_, _| panic!("no entries here")).unwrap();
    assert!(matches!(listed, Listed::Other(r) if *r == error));
}

#[test]
fn a_failing_handler_stops_and_a_cut_reply_fails() {
    let reply = streamed(&sample());
    let mut seen = 0;
    let mut pipe_closed = |_: &EntryText<'_>, _: Option<&[u8]>| {
        seen += 1;
        Err(io::Error::from(io::ErrorKind::BrokenPipe))
    };
    let listed = read_streamed(&mut Trickle(&reply, 9), Vec::new(), &mut pipe_closed);
    assert!(matches!(listed, Ok(Listed::Stopped(ref e)) if e.kind() == io::ErrorKind::BrokenPipe));
    let listed = read_reply(&reply, &mut pipe_closed);
    assert!(matches!(listed, Ok(Listed::Stopped(_))));
    assert_eq!(seen, 2);
    // Cut in the middle of an entry, or after it: the daemon went away.
    for cut in [ENTRIES_HEAD.len() + 10, reply.len() - 3] {
        let listed = read_streamed(&mut Trickle(&reply[..cut], 5), Vec::new(), &mut |_, _| {
            Ok(())
        });
        assert!(matches!(listed, Err(ReadError::Closed)), "{listed:?}");
    }
    // Something else than an entry.
    let mut bad = ENTRIES_HEAD.to_vec();
    bad.extend_from_slice(b"7]}\n");
    let listed = read_streamed(&mut Trickle(&bad, 100), Vec::new(), &mut |_, _| Ok(()));
    assert!(matches!(listed, Err(ReadError::Garbled(_))), "{listed:?}");
}

/// The quick reader of the daemon's own form reads each entry as serde
/// does, or leaves it to serde: never a wrong entry, cut short or not.
#[test]
fn the_quick_reader_agrees_with_serde_or_stands_aside() {
    let mut quick_ones = 0;
    for e in sample() {
        let mut json = Vec::new();
        e.write_json(&mut json);
        let general: EntryText<'_> = serde_json::from_slice(&json).unwrap();
        match quick_entry(&json) {
            Some((quick, len)) => {
                assert_eq!((quick, len), (general, json.len()));
                quick_ones += 1;
            }
            None => assert!(e.comment.is_some_and(|c| c.contains('"')), "{e:?}"),
        }
        for cut in 0..json.len() {
            assert!(quick_entry(&json[..cut]).is_none(), "{cut}");
        }
        // Followed by more of the reply, it reads just the entry.
        json.extend_from_slice(b",{\"list\"");
        let (_, len, _) = parse_entry(&json).unwrap().unwrap();
        assert_eq!(&json[len..], b",{\"list\"");
    }
    assert_eq!(quick_ones, sample().len() - 1);
    for other in [
        &br#"{"prefix":"1.2.3.4/32","list":"block","origin":"file","comment":null,"expires_in_secs":null,"hits":0}"#[..],
        br#"{"list": "block","prefix":"1.2.3.4/32","origin":"file","comment":null,"expires_in_secs":null,"hits":0}"#,
        br#"{"list":"block","prefix":"1.2.3.4/32","origin":"file","comment":null,"expires_in_secs":null,"hits":01}"#,
        br#"{"list":"block","prefix":"1.2.3.4/32","origin":"file","comment":null,"expires_in_secs":null,"hits":99999999999999999999}"#,
    ] {
        assert!(quick_entry(other).is_none(), "{}", String::from_utf8_lossy(other));
    }
}

/// Prefixes written by hand are written as `Display` writes them.
#[test]
fn prefixes_are_written_as_display_writes_them() {
    let mut texts: Vec<String> = [
        "::/0",
        "::1/128",
        "::ffff:198.18.0.7/128",
        "::198.18.0.7/128",
        "1::/16",
        "1:0:0:1::/64",
        "1::1:0:0:1/128",
        "0:1:0:1:0:1:0:1/128",
        "1:0:0:2:0:0:3:4/128",
        "fe80::abcd:0:0:0/80",
        "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff/128",
        "0.0.0.0/0",
        "255.255.255.255/32",
        "10.0.0.0/8",
    ]
    .map(str::to_owned)
    .to_vec();
    // Addresses with zero groups scattered at random, and random ones.
    let mut x = 0x9e37_79b9_7f4a_7c15_u64;
    for _ in 0..2000 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let mask = u128::from(x) * 0x0001_0001_0001_0001;
        let addr = (u128::from(x) << 64 | u128::from(x.rotate_left(17)))
            & !(mask & 0xffff_0000_ffff_0000_0000_ffff_ffff_0000);
        texts.push(format!("{}/128", Ipv6Addr::from(addr)));
        #[expect(clippy::cast_possible_truncation, reason = "a random address")]
        texts.push(format!("{}/32", Ipv4Addr::from(x as u32)));
    }
    for text in texts {
        let net: ipnet::IpNet = text.parse().unwrap();
        let prefix = Prefix::truncating(net.addr(), net.prefix_len());
        let mut out = Vec::new();
        write_prefix(&mut out, prefix);
        assert_eq!(String::from_utf8(out).unwrap(), prefix.to_string());
    }
}
