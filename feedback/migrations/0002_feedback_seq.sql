-- An insertion sequence on feedback, for readers that follow new events as they arrive (the served lookup's live
-- fold-in polls "seq > last seen"). One writer connection commits batches one after another, so sequence values
-- become visible in order; readers still re-read a small overlap in case several writers ever commit out of order.
ALTER TABLE feedback ADD COLUMN seq bigserial;
CREATE INDEX feedback_clicks_by_seq ON feedback (seq) WHERE clicked_item IS NOT NULL;
