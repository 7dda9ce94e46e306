-- Order lookup by number: shoppers type "#w2611340", "W2611340" or "w2611340". The normalized
-- form (upper case, with the leading '#') is stored and indexed, so a lookup by number is an
-- index search instead of a scan of every order computing upper(number).
ALTER TABLE orders ADD COLUMN number_key TEXT;
UPDATE orders SET number_key = CASE WHEN number LIKE '#%' THEN upper(number) ELSE '#' || upper(number) END;
CREATE INDEX orders_number_lookup ON orders (number_key);
