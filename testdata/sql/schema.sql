-- The schema docs/auth.md describes for [directory] type = "sql": the
-- tests and the SQL benchmark load it into a throwaway PostgreSQL.
CREATE TABLE users (
    email         text PRIMARY KEY,            -- login name: user@domain, lower case
    password_hash text NOT NULL,               -- {SSHA}, {SSHA512}, $2b$ (bcrypt), $argon2id$
    real_name     text,
    role          text NOT NULL DEFAULT 'user',
    disabled      boolean NOT NULL DEFAULT false,
    locked        boolean NOT NULL DEFAULT false,
    sip_secret    text                         -- READPLAIN (secret_query)
);
CREATE TABLE aliases (
    alias text PRIMARY KEY,                    -- another address of the same person
    email text NOT NULL REFERENCES users ON DELETE CASCADE
);
CREATE TABLE user_groups (
    email      text NOT NULL REFERENCES users ON DELETE CASCADE,
    group_name text NOT NULL,
    PRIMARY KEY (email, group_name)
);
-- The helpers' role reads, nothing more.
GRANT SELECT ON users, aliases, user_groups TO cgp;
