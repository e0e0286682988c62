//! Incremental decoding of a `GET /sync/pull` answer: each bundle is handed out as soon as its
//! last byte arrives, so neither the page's bytes nor its decoded rows are ever held whole
//! (a page of 1,000 bundles of 1,000 rows was 300 MB of JSON and more once decoded).
//!
//! The top level (`{"stable_bundle_seq": .., "bundles": [..], "has_more": ..}`, members in
//! any order, unknown members ignored) is scanned here; every member value and every bundle
//! is decoded by `serde_json`, so what this accepts is what `serde_json::from_slice::<
//! PullResponse>` accepts. Bundles listed before `stable_bundle_seq` are held until it comes
//! (the client bounds a page, so that stays bounded too).

use oversync_protocol::Bundle;

/// A piece of a pull answer, in the order the client must see them.
#[derive(Debug, Clone, PartialEq)]
pub enum PullPart {
    /// The answer's `stable_bundle_seq`: always before its first bundle.
    Stable(i64),
    /// The next complete bundle.
    Bundle(Bundle),
}

/// The end of a pull answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PullPageEnd {
    /// The answer's `stable_bundle_seq`.
    pub stable_bundle_seq: i64,
    /// The answer's `has_more`.
    pub has_more: bool,
    /// Bytes of the body (of the last attempt, when a cut body was asked for again).
    pub body_bytes: u64,
}

/// Why [`Transport::pull_each`](crate::transport::Transport::pull_each) stopped early.
#[derive(Debug)]
pub enum PullEachError<E> {
    /// The request or its answer failed (after the retries).
    Transport(crate::transport::TransportError),
    /// The caller's `on_part` returned this.
    Stopped(E),
}

/// Where the scanner is in the top-level object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Before `{`.
    Start,
    /// After `{` or `,`: a member name (or `}` when `first`).
    Name { first: bool },
    /// After a member name: `:`.
    Colon(Member),
    /// After `:`: the member's value.
    Value(Member),
    /// After a member's value: `,` or `}`.
    AfterMember,
    /// After `[` of `bundles` or a bundle's `,`: a bundle (or `]` when `first`).
    Bundle { first: bool },
    /// After a bundle: `,` or `]`.
    AfterBundle,
    /// After the closing `}`: only whitespace.
    Done,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Member {
    Stable,
    Bundles,
    HasMore,
    Other,
}

/// Resumable scan of one JSON value's extent, so a large bundle arriving in many chunks is
/// scanned once, not once per chunk.
#[derive(Debug, Default, Clone, Copy)]
struct Scan {
    /// Bytes of the value scanned so far (from the decoder's `pos`).
    len: usize,
    depth: u32,
    in_string: bool,
    escaped: bool,
}

/// Decodes a pull answer fed in arbitrary pieces. See the module documentation.
#[derive(Debug)]
pub struct PullBodyDecoder {
    buf: Vec<u8>,
    /// Bytes of `buf` already consumed.
    pos: usize,
    state: State,
    scan: Scan,
    stable: Option<i64>,
    has_more: Option<bool>,
    seen_bundles: bool,
    /// Bundles decoded before `stable_bundle_seq` was.
    held: Vec<Bundle>,
    /// Bytes fed so far.
    fed: u64,
}

impl Default for PullBodyDecoder {
    fn default() -> Self {
        Self::new()
    }
}

impl PullBodyDecoder {
    /// A decoder at the start of a body.
    pub fn new() -> Self {
        PullBodyDecoder {
            buf: Vec::new(),
            pos: 0,
            state: State::Start,
            scan: Scan::default(),
            stable: None,
            has_more: None,
            seen_bundles: false,
            held: Vec::new(),
            fed: 0,
        }
    }

    /// Bytes received but not yet decoded (at most about one bundle).
    pub fn buffered(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// Takes the next piece of the body; appends the parts it completes to `out`.
    ///
    /// # Errors
    ///
    /// A message saying what is wrong with the body.
    pub fn feed(&mut self, bytes: &[u8], out: &mut Vec<PullPart>) -> Result<(), String> {
        if self.pos > 0 && self.pos >= self.buf.len() / 2 {
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
        self.buf.extend_from_slice(bytes);
        self.fed += bytes.len() as u64;
        self.run(false, out)
    }

    /// The body ended; appends the last parts to `out` and returns the page's end.
    ///
    /// # Errors
    ///
    /// A message saying what is wrong with the body (it stopped early, say).
    pub fn finish(mut self, out: &mut Vec<PullPart>) -> Result<PullPageEnd, String> {
        self.run(true, out)?;
        if self.state != State::Done {
            return Err("the body ended before the pull answer did".into());
        }
        let stable = self
            .stable
            .ok_or_else(|| "missing field `stable_bundle_seq`".to_string())?;
        Ok(PullPageEnd {
            stable_bundle_seq: stable,
            has_more: self.has_more.unwrap_or(false),
            body_bytes: self.fed,
        })
    }

    fn run(&mut self, at_end: bool, out: &mut Vec<PullPart>) -> Result<(), String> {
        loop {
            self.skip_whitespace();
            let Some(&next) = self.buf.get(self.pos) else {
                return Ok(());
            };
            match self.state {
                State::Start => {
                    self.expect(next, b'{', "the answer is not a JSON object")?;
                    self.state = State::Name { first: true };
                }
                State::Name { first } => {
                    if first && next == b'}' {
                        self.pos += 1;
                        self.state = State::Done;
                        continue;
                    }
                    if next != b'"' {
                        return Err(self.unexpected("a member name"));
                    }
                    let Some(end) = self.scan_value(at_end) else {
                        return Ok(());
                    };
                    let name: String = self.parse(end, "a member name")?;
                    let member = match name.as_str() {
                        "stable_bundle_seq" => Member::Stable,
                        "bundles" => Member::Bundles,
                        "has_more" => Member::HasMore,
                        _ => Member::Other,
                    };
                    let duplicate = match member {
                        Member::Stable => self.stable.is_some(),
                        Member::Bundles => self.seen_bundles,
                        Member::HasMore => self.has_more.is_some(),
                        Member::Other => false,
                    };
                    if duplicate {
                        return Err(format!("duplicate field `{name}`"));
                    }
                    self.state = State::Colon(member);
                }
                State::Colon(member) => {
                    self.expect(next, b':', "`:` after a member name")?;
                    self.state = State::Value(member);
                }
                State::Value(Member::Bundles) => {
                    self.expect(next, b'[', "`bundles` is not an array")?;
                    self.seen_bundles = true;
                    self.state = State::Bundle { first: true };
                }
                State::Value(member) => {
                    let Some(end) = self.scan_value(at_end) else {
                        return Ok(());
                    };
                    match member {
                        Member::Stable => {
                            let stable: i64 = self.parse(end, "`stable_bundle_seq`")?;
                            self.stable = Some(stable);
                            out.push(PullPart::Stable(stable));
                            out.extend(self.held.drain(..).map(PullPart::Bundle));
                        }
                        Member::HasMore => self.has_more = Some(self.parse(end, "`has_more`")?),
                        _ => {
                            self.parse::<serde::de::IgnoredAny>(end, "a member")?;
                        }
                    }
                    self.state = State::AfterMember;
                }
                State::AfterMember => {
                    self.pos += 1;
                    self.state = match next {
                        b',' => State::Name { first: false },
                        b'}' => State::Done,
                        _ => {
                            self.pos -= 1;
                            return Err(self.unexpected("`,` or `}`"));
                        }
                    };
                }
                State::Bundle { first } => {
                    if first && next == b']' {
                        self.pos += 1;
                        self.state = State::AfterMember;
                        continue;
                    }
                    let Some(end) = self.scan_value(at_end) else {
                        return Ok(());
                    };
                    let bundle: Bundle = self.parse(end, "a bundle")?;
                    if self.stable.is_some() {
                        out.push(PullPart::Bundle(bundle));
                    } else {
                        self.held.push(bundle);
                    }
                    self.state = State::AfterBundle;
                }
                State::AfterBundle => {
                    self.pos += 1;
                    self.state = match next {
                        b',' => State::Bundle { first: false },
                        b']' => State::AfterMember,
                        _ => {
                            self.pos -= 1;
                            return Err(self.unexpected("`,` or `]` in `bundles`"));
                        }
                    };
                }
                State::Done => return Err(self.unexpected("the end of the body")),
            }
        }
    }

    fn skip_whitespace(&mut self) {
        while self
            .buf
            .get(self.pos)
            .is_some_and(|b| matches!(b, b' ' | b'\t' | b'\n' | b'\r'))
        {
            self.pos += 1;
        }
    }

    fn expect(&mut self, next: u8, want: u8, what: &str) -> Result<(), String> {
        if next != want {
            return Err(self.unexpected(what));
        }
        self.pos += 1;
        Ok(())
    }

    fn unexpected(&self, wanted: &str) -> String {
        format!(
            "expected {wanted} at byte {} of the pull answer, found {}",
            self.pos,
            crate::transport::preview(&self.buf[self.pos..], 40)
        )
    }

    /// Decodes `buf[pos..end]` and consumes it.
    fn parse<T: serde::de::DeserializeOwned>(
        &mut self,
        end: usize,
        what: &str,
    ) -> Result<T, String> {
        let value = serde_json::from_slice(&self.buf[self.pos..end])
            .map_err(|e| format!("{what} in the pull answer: {e}"))?;
        self.pos = end;
        Ok(value)
    }

    /// The end of the JSON value starting at `pos`, or `None` until more bytes arrive. Only
    /// its extent is found here (brackets and strings); `serde_json` then checks it.
    fn scan_value(&mut self, at_end: bool) -> Option<usize> {
        let start = self.pos;
        let bytes = &self.buf[start..];
        let mut s = self.scan;
        if s.len == 0 {
            match bytes.first()? {
                b'{' | b'[' => {
                    s.depth = 1;
                    s.len = 1;
                }
                b'"' => {
                    s.in_string = true;
                    s.len = 1;
                }
                _ => {
                    // A number, `true`, `false` or `null`: up to the next delimiter.
                    let len = bytes
                        .iter()
                        .position(|b| {
                            matches!(b, b',' | b'}' | b']' | b' ' | b'\t' | b'\n' | b'\r')
                        })
                        .or(at_end.then_some(bytes.len()))?;
                    return Some(start + len.max(1));
                }
            }
        }
        let mut i = s.len;
        while i < bytes.len() {
            if s.in_string {
                if s.escaped {
                    s.escaped = false;
                    i += 1;
                    continue;
                }
                // Most of a bundle is string content: jump to the next quote or backslash.
                let Some(at) = bytes[i..].iter().position(|&b| b == b'"' || b == b'\\') else {
                    break;
                };
                i += at;
                if bytes[i] == b'\\' {
                    s.escaped = true;
                } else {
                    s.in_string = false;
                    if s.depth == 0 {
                        self.scan = Scan::default();
                        return Some(start + i + 1);
                    }
                }
                i += 1;
                continue;
            }
            match bytes[i] {
                b'"' => s.in_string = true,
                b'{' | b'[' => s.depth += 1,
                b'}' | b']' => {
                    s.depth -= 1;
                    if s.depth == 0 {
                        self.scan = Scan::default();
                        return Some(start + i + 1);
                    }
                }
                _ => {}
            }
            i += 1;
        }
        s.len = bytes.len();
        if at_end {
            // Incomplete: hand the rest to serde_json, which says what is missing.
            self.scan = Scan::default();
            return Some(self.buf.len());
        }
        self.scan = s;
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use oversync_protocol::PullResponse;

    fn decode_in_pieces(body: &[u8], piece: usize) -> Result<(Vec<PullPart>, PullPageEnd), String> {
        let mut decoder = PullBodyDecoder::new();
        let mut parts = Vec::new();
        for chunk in body.chunks(piece.max(1)) {
            decoder.feed(chunk, &mut parts)?;
        }
        let end = decoder.finish(&mut parts)?;
        Ok((parts, end))
    }

    fn page() -> PullResponse {
        let row = |i: i64| {
            serde_json::json!({
                "schema": "business", "table": "users",
                "key": {"id": format!("00000000-0000-4000-8000-{i:012}")},
                "op": "INSERT", "row_version": i,
                "payload": {"id": format!("00000000-0000-4000-8000-{i:012}"), "name": "a \"quoted\" ]} name", "email": "\\"}
            })
        };
        serde_json::from_value(serde_json::json!({
            "stable_bundle_seq": 9,
            "bundles": [
                {"bundle_seq": 3, "source_id": "s", "source_bundle_id": 1, "rows": [row(1), row(2)]},
                {"bundle_seq": 4, "source_id": "s", "source_bundle_id": 2, "row_count": 1, "rows": [row(3)]}
            ],
            "has_more": true
        }))
        .expect("page")
    }

    #[test]
    fn any_split_gives_the_parts_serde_gives() {
        let page = page();
        let body = serde_json::to_vec_pretty(&page).expect("encode");
        for piece in [1, 2, 3, 7, 64, body.len()] {
            let (parts, end) = decode_in_pieces(&body, piece).expect("decodes");
            let mut want = vec![PullPart::Stable(9)];
            want.extend(page.bundles.iter().cloned().map(PullPart::Bundle));
            assert_eq!(parts, want, "piece {piece}");
            assert_eq!(
                end,
                PullPageEnd {
                    stable_bundle_seq: 9,
                    has_more: true,
                    body_bytes: body.len() as u64,
                }
            );
        }
    }

    #[test]
    fn bundles_before_the_ceiling_are_held_until_it_comes() {
        let body = br#"{"extra": [1, {"x": "]"}], "bundles": [{"bundle_seq": 1, "source_id": "s", "source_bundle_id": 1, "rows": []}], "stable_bundle_seq": 1}"#;
        let (parts, end) = decode_in_pieces(body, 5).expect("decodes");
        assert!(
            matches!(parts.as_slice(), [PullPart::Stable(1), PullPart::Bundle(b)] if b.bundle_seq == 1)
        );
        assert!(!end.has_more);
    }

    #[test]
    fn refuses_what_serde_refuses() {
        for body in [
            &br#"{"stable_bundle_seq": 1, "bundles": [], "has_more": false"#[..],
            br#"{"stable_bundle_seq": 1, "stable_bundle_seq": 2}"#,
            br#"{"bundles": []}"#,
            br#"{"stable_bundle_seq": "1"}"#,
            br#"{"stable_bundle_seq": 1, "bundles": null}"#,
            br#"{"stable_bundle_seq": 1, "bundles": [{"bundle_seq": 1}]}"#,
            br#"{"stable_bundle_seq": 1, "bundles": [] "has_more": false}"#,
            br#"{"stable_bundle_seq": 1} trailing"#,
            br#"{"stable_bundle_seq": 1, "x": tru}"#,
            br#"[]"#,
            b"",
        ] {
            assert!(
                serde_json::from_slice::<PullResponse>(body).is_err(),
                "serde accepts {}",
                String::from_utf8_lossy(body)
            );
            for piece in [1, 4, body.len()] {
                assert!(
                    decode_in_pieces(body, piece).is_err(),
                    "accepted {} in pieces of {piece}",
                    String::from_utf8_lossy(body)
                );
            }
        }
    }
}
