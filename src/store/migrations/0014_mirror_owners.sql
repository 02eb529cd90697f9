-- owsync 0014: a mirror schema belongs to one ClientSync for good. The unique index of
-- 0004 sees only spec rows, and `cluster deregister` deletes a cluster's rows while it
-- keeps their mirrors: a new ClientSync could then take a kept mirror over (its first
-- sync tombstones every row its own source lacks). Ownership is therefore recorded here,
-- outside every cluster's rows (no cluster_name column: deregistration and moves leave
-- it alone), by a trigger on client_specs; only an admin can hand a kept mirror to
-- another ClientSync (UPDATE or DELETE here). `owsyncctl move` takes ownership along.
CREATE TABLE sync_metadata.mirror_owners (
    schema_name   text        PRIMARY KEY,
    owner_cluster text        NOT NULL,
    owner_name    text        NOT NULL,
    recorded_at   timestamptz NOT NULL DEFAULT now()
);
REVOKE ALL ON sync_metadata.mirror_owners FROM PUBLIC;

INSERT INTO sync_metadata.mirror_owners (schema_name, owner_cluster, owner_name)
SELECT spec #>> '{target,schema}', cluster_name, name FROM sync_metadata.client_specs
WHERE spec #>> '{target,schema}' IS NOT NULL
ON CONFLICT (schema_name) DO NOTHING;

CREATE FUNCTION sync_metadata.keep_mirror_owner() RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    s text := NEW.spec #>> '{target,schema}';
    o record;
BEGIN
    IF s IS NULL THEN
        RETURN NEW;
    END IF;
    IF TG_OP = 'UPDATE' AND (OLD.cluster_name, OLD.name) IS DISTINCT FROM (NEW.cluster_name, NEW.name) THEN
        -- A move: the mirror goes with its spec.
        UPDATE sync_metadata.mirror_owners
        SET owner_cluster = NEW.cluster_name, owner_name = NEW.name, recorded_at = now()
        WHERE schema_name = s AND owner_cluster = OLD.cluster_name AND owner_name = OLD.name;
    END IF;
    SELECT owner_cluster, owner_name INTO o FROM sync_metadata.mirror_owners WHERE schema_name = s;
    IF FOUND AND (o.owner_cluster, o.owner_name) IS DISTINCT FROM (NEW.cluster_name, NEW.name)
       -- A spec row that still has the schema: the unique index of 0004 refuses, with its own message.
       AND NOT EXISTS (SELECT 1 FROM sync_metadata.client_specs c
                       WHERE c.spec #>> '{target,schema}' = s
                         AND (c.cluster_name, c.name) IS DISTINCT FROM (NEW.cluster_name, NEW.name)) THEN
        RAISE EXCEPTION 'owsync: spec.target.schema % is the kept mirror of clientsync/% of cluster % (a mirror belongs to one ClientSync for good; syncing another source into it would tombstone its rows). Give clientsync/% a schema of its own, or, to adopt that mirror deliberately, as admin: UPDATE sync_metadata.mirror_owners SET owner_cluster = %L, owner_name = %L WHERE schema_name = %L; then apply again',
            s, o.owner_name, o.owner_cluster, NEW.name, NEW.cluster_name, NEW.name, s
            USING ERRCODE = 'unique_violation';
    END IF;
    INSERT INTO sync_metadata.mirror_owners (schema_name, owner_cluster, owner_name)
    VALUES (s, NEW.cluster_name, NEW.name)
    ON CONFLICT (schema_name) DO NOTHING;
    RETURN NEW;
END
$fn$;
REVOKE ALL ON FUNCTION sync_metadata.keep_mirror_owner() FROM PUBLIC;

CREATE TRIGGER keep_mirror_owner BEFORE INSERT OR UPDATE ON sync_metadata.client_specs
    FOR EACH ROW EXECUTE FUNCTION sync_metadata.keep_mirror_owner();
