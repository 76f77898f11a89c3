//! Realistic ACS identifiers, substituted for the `{param}`s of a path template.

/// A realistic value for a template parameter, by name. ACS ids contain `:`, `@`, `+` and
/// `%`-escapes, which is what makes matching them hard.
pub fn sample_id(param: &str) -> &'static str {
    match param {
        "chatThreadId" => "19:a1B2c3D4e5@thread.v2",
        "chatMessageId" => "1727193000123",
        "chatParticipantId" | "chatMemberId" => {
            "8:acs:1b2c3d4e-0000-1111-2222-333344445555_00000020-aaaa-bbbb"
        }
        "id" => "8:acs:1b2c3d4e-0000-1111-2222-333344445555_00000020-cccc-dddd",
        "participantRawId" | "participantMri" => "4:+14255550123",
        "callConnectionId" => "421f0b00-2b3c-4d5e-9f80-a1b2c3d4e5f6",
        "operationId" | "messageId" => "f3c2b1a0-9e8d-7c6b-5a49-382716051423",
        "outgoingMessageId" => "Outgoing_20261125_abc%2Bdef",
        "roomId" => "99466898241024408",
        "jobId" => "job-42",
        "assignmentId" => "assign:7",
        "workerId" => "worker@team-1",
        "offerId" => "offer-1",
        "queueId" => "queue_main",
        _ => "id-123",
    }
}

/// `template` with every `{param}` replaced by [`sample_id`].
pub fn fill(template: &str) -> String {
    let mut out = String::with_capacity(template.len() + 32);
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let close = rest[open..]
            .find('}')
            .map(|i| open + i)
            .expect("balanced braces");
        out.push_str(sample_id(&rest[open + 1..close]));
        rest = &rest[close + 1..];
    }
    out.push_str(rest);
    out
}
