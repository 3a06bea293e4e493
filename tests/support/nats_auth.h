/*
 * Credentials for secured NATS tests, made the way an operator makes them, with nothing faked:
 * X.509 certificates by the `openssl` command in a temp dir, NKeys (ed25519 keys in the nkeys text
 * format: prefix byte, base32, CRC-16) and the operator/account/user JWTs that `nsc` would issue
 * (nsc is not packaged in Debian 12), signed by OpenSSL's ed25519. nats.c reads the user seeds
 * (NATS_NKEY_SEED, NATS_CREDS) and the server checks every key, JWT and signature, so a format error here
 * fails a test. Also a test client that connects with any of them (the shared client.h takes a URL only: no
 * CA, client certificate, NKey or credentials file).
 */
#ifndef BW_TEST_NATS_AUTH_H
#define BW_TEST_NATS_AUTH_H

#include <jansson.h>
#include <nats/nats.h>

/* ---- X.509 (openssl command) ---------------------------------------------------------------------- */

/* A temp dir holding: a CA; a server certificate it signed for 127.0.0.1 and localhost (subjectAltName);
   a client certificate it signed (clientAuth); and an unrelated second CA with a client certificate of
   its own (the "wrong" ones). Caller-owned; paths are absolute. */
typedef struct bw_test_pki {
    char dir[64];
    char ca[128], ca_key[128];
    char server_cert[128], server_key[128];
    char client_cert[128], client_key[128];
    char other_ca[128], other_ca_key[128];
    char other_client_cert[128], other_client_key[128];
} bw_test_pki_t;

/* Makes all of the above (P-256 keys, 2 days). 0 on success; on failure the openssl output is printed
   and nothing is left behind. */
int bw_test_pki_create(bw_test_pki_t *p);
/* Removes the dir. Safe on a zeroed or destroyed struct. */
void bw_test_pki_destroy(bw_test_pki_t *p);

/* ---- NKeys ------------------------------------------------------------------------------------------ */

/* The nkeys type prefixes (first character of the public key). */
typedef enum { BW_NKEY_OPERATOR = 'O', BW_NKEY_ACCOUNT = 'A', BW_NKEY_USER = 'U' } bw_nkey_type_t;

typedef struct bw_test_nkey {
    char seed[64];         /* "SO…", "SA…", "SU…": 58 characters */
    char pub[64];          /* "O…", "A…", "U…": 56 characters */
    unsigned char raw[32]; /* the ed25519 seed itself */
} bw_test_nkey_t;

/* A fresh ed25519 key pair of the given type (randomness from OpenSSL). 0 on success. */
int bw_test_nkey_create(bw_test_nkey_t *k, bw_nkey_type_t type);
/* Writes k's seed to path (mode 0600), as nats.c's NATS_NKEY seed file. 0 on success. */
int bw_test_nkey_write_seed(const bw_test_nkey_t *k, const char *path);

/* ---- JWTs and credentials files ---------------------------------------------------------------------- */

/* Each returns a malloc'd JWT (caller frees), or NULL. The operator's is self-signed; the account's is
   signed by the operator, with no limits (and JetStream enabled without limits when jetstream is
   non-zero); the user's is signed by its account, with no limits and no permissions of its own. */
char *bw_test_jwt_operator(const bw_test_nkey_t *op, const char *name);
char *bw_test_jwt_account(const bw_test_nkey_t *op, const bw_test_nkey_t *acc, const char *name,
                          int jetstream);
char *bw_test_jwt_user(const bw_test_nkey_t *acc, const bw_test_nkey_t *user, const char *name);
/* Writes a .creds file (the user JWT and the user's seed in nsc's armour) to path, mode 0600. */
int bw_test_creds_write(const char *path, const char *user_jwt, const bw_test_nkey_t *user);

/* ---- a client with credentials --------------------------------------------------------------------- */

/* How a test client authenticates; NULL fields are unused. The URL may carry user:password@ or token@. */
typedef struct bw_test_auth {
    const char *url;
    const char *ca;               /* trust this CA (TLS) */
    const char *cert, *key;       /* client certificate (mutual TLS) */
    const char *nkey, *nkey_seed; /* public key and seed file */
    const char *creds;            /* credentials file */
} bw_test_auth_t;

/* Connects once (no retries beyond 5 s of the server starting). NULL on failure, with nats.c's error
   printed. Caller closes with natsConnection_Destroy. */
natsConnection *bw_test_auth_connect(const bw_test_auth_t *a);

/* Publishes an assignment `id` of job type `type` with payload (JSON text) and the router's headers
   (tenant "acme") on the default assign subject, then flushes. 0 on success. */
int bw_test_auth_submit(natsConnection *nc, const char *id, const char *type, const char *payload);
/* Waits up to wait_ms for the result of id on sub (a subscription to the result subject), skipping
   others. The bare result (envelope unwrapped; caller decrefs) or NULL. */
json_t *bw_test_auth_wait_result(natsSubscription *sub, const char *id, int wait_ms);
/* Subscribes to the default result subject, submits an echo `id` (payload {"probe": id}) and waits up
   to wait_ms for its result (as bw_test_auth_wait_result). */
json_t *bw_test_auth_echo(natsConnection *nc, const char *id, int wait_ms);

/* Publishes data on subject and waits for the server's verdict: 1 when the server refused it
   (a permissions violation, as an asynchronous error), 0 when a round trip after it passed without
   one, -1 on another failure. nc must have been made by bw_test_auth_connect. */
int bw_test_auth_publish_refused(natsConnection *nc, const char *subject, const char *data);

/* ---- files ------------------------------------------------------------------------------------------- */

/* Writes text to path. 0 on success. */
int bw_test_write_file(const char *path, const char *text);
/* Number of non-overlapping occurrences of needle in the file at path (0 when unreadable). */
int bw_test_file_count(const char *path, const char *needle);

#endif
