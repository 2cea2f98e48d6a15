-- The table and trigger behind the order-webhook example.
-- The trigger sends only the key of the changed row; the plugin fetches the row.
-- It sends with pgnotifier.send, so each change is delivered at least once,
-- even while the host is down: run `pgnotifier schema install` first.
CREATE TABLE IF NOT EXISTS orders (
    id         bigserial PRIMARY KEY,
    customer   text NOT NULL,
    total      numeric(10, 2) NOT NULL,
    status     text NOT NULL DEFAULT 'new',
    updated_at timestamptz NOT NULL DEFAULT now()
);

CREATE OR REPLACE FUNCTION notify_order_changed() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pgnotifier.send('orders_changed', json_build_object(
        'op', TG_OP,
        'id', CASE TG_OP WHEN 'DELETE' THEN OLD.id ELSE NEW.id END)::text);
    RETURN NULL;
END
$$;

DROP TRIGGER IF EXISTS orders_changed ON orders;
CREATE TRIGGER orders_changed
    AFTER INSERT OR UPDATE OR DELETE ON orders
    FOR EACH ROW EXECUTE FUNCTION notify_order_changed();

-- The role the plugin's queries run as ([grants] query_role): it may read
-- orders, and nothing else.
DO $$
BEGIN
    CREATE ROLE order_webhook NOLOGIN;
EXCEPTION WHEN duplicate_object OR unique_violation THEN
    NULL;
END
$$;
GRANT SELECT ON orders TO order_webhook;
