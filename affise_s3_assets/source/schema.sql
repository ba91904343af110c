CREATE TABLE IF NOT EXISTS clicks (
  id VARCHAR, created_at TIMESTAMP, affiliate_id INTEGER, advertiser_id VARCHAR,
  offer_id INTEGER, landing_id INTEGER, ip VARCHAR, country VARCHAR, city VARCHAR,
  device_type VARCHAR, device VARCHAR, os VARCHAR, os_version VARCHAR, browser VARCHAR,
  ua VARCHAR, referrer VARCHAR, connection_type VARCHAR, isp VARCHAR, uniq BOOLEAN,
  sub1 VARCHAR, sub2 VARCHAR, sub3 VARCHAR, sub4 VARCHAR, sub5 VARCHAR,
  sub6 VARCHAR, sub7 VARCHAR, sub8 VARCHAR);
CREATE TABLE IF NOT EXISTS conversions (
  id VARCHAR, created_at TIMESTAMP, updated_at TIMESTAMP, click_id VARCHAR, action_id VARCHAR,
  click_time TIMESTAMP, affiliate_id INTEGER, advertiser_id VARCHAR, offer_id INTEGER,
  goal VARCHAR, status VARCHAR, payouts DECIMAL(18,4), revenue DECIMAL(18,4), currency VARCHAR,
  country VARCHAR, city VARCHAR, ip VARCHAR, os VARCHAR, device VARCHAR, browser VARCHAR,
  ua VARCHAR, referrer VARCHAR, sub1 VARCHAR, sub2 VARCHAR, sub3 VARCHAR, sub4 VARCHAR,
  sub5 VARCHAR, sub6 VARCHAR, sub7 VARCHAR, sub8 VARCHAR);
-- conversions.updated_at is the time of the conversion's latest change (its created_at while it
-- never changed): the conversion_updates export is windowed by it.
-- Maintained by whatever loads the events: per event type, every event with created_at before
-- complete_until is in the tables (for conversion_updates: every change with updated_at before
-- it). A window is delivered only once its end is at or before it
-- (without a row, the latest created_at present stands in). See docs/design.md, "Source completeness".
CREATE TABLE IF NOT EXISTS affise_watermarks (
  event_type VARCHAR PRIMARY KEY, complete_until TIMESTAMP NOT NULL);
