-- An event_id is an idempotency key for one content: a resend with the same content is stored once, a resend with
-- other content is a client bug the writer answers with 409 (feedback.conflicts). The digest (16 bytes of SHA-256
-- over what the event says happened: feedback.conflicts.CONTENT) is kept with the id so that the check needs no
-- column-by-column comparison; rows written before this migration have none and never conflict.
ALTER TABLE feedback ADD COLUMN digest bytea;
ALTER TABLE plays ADD COLUMN digest bytea;

-- One definition of a clean feedback event, used by the A/B report and by the live fold-in (serving/poller.py):
-- not an orphan (its impression exists), its click was shown, and user and group agree with the impression.
-- The view keeps its columns and adds seq (the fold-in follows it) and clean at the end.
CREATE OR REPLACE VIEW feedback_checked AS
SELECT c.*, NOT (c.orphan OR c.click_not_shown OR c.mismatch) AS clean
FROM (
    SELECT f.event_id, f.ts, f.request_id, f.user_id, f.ab_group, f.clicked_item, f.skipped_items,
           f.inference_time_ms,
           i.request_id IS NULL AS orphan,
           (i.request_id IS NOT NULL AND f.clicked_item IS NOT NULL
            AND NOT (f.clicked_item = ANY (i.items))) AS click_not_shown,
           (i.request_id IS NOT NULL AND (i.user_id <> f.user_id OR i.ab_group <> f.ab_group)) AS mismatch,
           f.seq
    FROM feedback f
    LEFT JOIN impressions i ON i.request_id = f.request_id
) c;
