/*
 * Secured-NATS test credentials; see nats_auth.h. The formats are NATS's own:
 * - an nkey is base32 (RFC 4648, no padding) of [prefix byte][32-byte ed25519 key][CRC-16/XMODEM, little
 *   endian]; a seed puts the seed prefix (18 << 3) in the first 5 bits and the key type's prefix in the next
 *   5, across two bytes;
 * - a JWT is base64url(header).base64url(claims).base64url(ed25519 signature of the first two parts by the
 *   issuer's seed), header {"typ":"JWT","alg":"ed25519-nkey"}, claims jti/iat/iss/sub/name/nats, jti the
 *   base32 SHA-512/256 of the claims with an empty jti (what nats-io/jwt computes).
 * Keys and signatures come from OpenSSL (the seed from RAND_bytes, the public key and signatures by EVP's
 * ed25519; nats.c's nats_Sign takes user seeds only). A user seed encoded wrongly fails in nats.c, which
 * decodes it for NATS_NKEY_SEED and NATS_CREDS; a wrong public key, JWT or signature fails in the server.
 */
#include "nats_auth.h"

#include "testutil.h"

#include <fcntl.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define OPENSSL_BIN "/usr/bin/openssl"
#define CONNECT_TIMEOUT_MS 5000

/* ---- files ---- */

int bw_test_write_file(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    if (f == NULL)
        return -1;
    int rc = fputs(text, f) < 0 ? -1 : 0;
    if (fclose(f) != 0)
        rc = -1;
    return rc;
}

int bw_test_file_count(const char *path, const char *needle)
{
    char *text = bw_test_read_file(path, NULL);
    int n = 0;
    size_t len = strlen(needle);
    for (const char *p = text; p != NULL && len > 0 && (p = strstr(p, needle)) != NULL; p += len)
        n++;
    free(text);
    return n;
}

static int write_secret(const char *path, const char *text)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0)
        return -1;
    size_t len = strlen(text);
    int rc = write(fd, text, len) == (ssize_t)len ? 0 : -1;
    close(fd);
    return rc;
}

/* ---- X.509 ---- */

/* Runs openssl with args in dir, its output appended to dir/openssl.log. 0 when it exits 0. */
static int run_openssl(const char *dir, const char *const *args)
{
    char *argv[32], log_path[160];
    int n = 0, status = 0;
    argv[n++] = (char *)"openssl";
    for (size_t i = 0; args[i] != NULL && n < 31; i++)
        argv[n++] = (char *)args[i];
    argv[n] = NULL;
    snprintf(log_path, sizeof log_path, "%s/openssl.log", dir);
    int fd = open(log_path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    int fds[3] = {-1, fd, fd};
    pid_t pid = bw_test_spawn_ex(OPENSSL_BIN, argv, NULL, fds, &(bw_test_spawn_opts_t){.cwd = dir});
    if (fd >= 0)
        close(fd);
    if (pid < 0 || waitpid(pid, &status, 0) != pid)
        return -1;
    return WIFEXITED(status) && WEXITSTATUS(status) == 0 ? 0 : -1;
}

static void path_in(char *out, size_t len, const char *dir, const char *name)
{
    snprintf(out, len, "%s/%s", dir, name);
}

/* A self-signed CA: name.pem, name-key.pem. */
static int make_ca(const char *dir, const char *name)
{
    char cert[64], key[64], subj[64];
    snprintf(cert, sizeof cert, "%s.pem", name);
    snprintf(key, sizeof key, "%s-key.pem", name);
    snprintf(subj, sizeof subj, "/CN=%s", name);
    const char *const args[] = {"req",
                                "-x509",
                                "-newkey",
                                "ec",
                                "-pkeyopt",
                                "ec_paramgen_curve:P-256",
                                "-nodes",
                                "-keyout",
                                key,
                                "-out",
                                cert,
                                "-days",
                                "2",
                                "-subj",
                                subj,
                                "-addext",
                                "basicConstraints=critical,CA:TRUE",
                                "-addext",
                                "keyUsage=critical,keyCertSign,cRLSign",
                                NULL};
    return run_openssl(dir, args);
}

/* A leaf certificate name.pem (key name-key.pem) signed by CA ca, with the extensions in ext. */
static int make_leaf(const char *dir, const char *ca, const char *name, const char *ext, int serial)
{
    char cert[64], key[64], csr[64], subj[64], extfile[64], ca_cert[64], ca_key[64], serial_s[16], path[200];
    snprintf(cert, sizeof cert, "%s.pem", name);
    snprintf(key, sizeof key, "%s-key.pem", name);
    snprintf(csr, sizeof csr, "%s.csr", name);
    snprintf(subj, sizeof subj, "/CN=%s", name);
    snprintf(extfile, sizeof extfile, "%s.ext", name);
    snprintf(ca_cert, sizeof ca_cert, "%s.pem", ca);
    snprintf(ca_key, sizeof ca_key, "%s-key.pem", ca);
    snprintf(serial_s, sizeof serial_s, "%d", serial);
    path_in(path, sizeof path, dir, extfile);
    if (bw_test_write_file(path, ext) != 0)
        return -1;
    const char *const req[] = {"req",    "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                               "-nodes", "-keyout", key,  "-out",     csr,
                               "-subj",  subj,      NULL};
    const char *const sign[] = {"x509",   "-req", "-in",         csr,      "-CA",   ca_cert,
                                "-CAkey", ca_key, "-set_serial", serial_s, "-days", "2",
                                "-out",   cert,   "-extfile",    extfile,  NULL};
    return run_openssl(dir, req) == 0 && run_openssl(dir, sign) == 0 ? 0 : -1;
}

int bw_test_pki_create(bw_test_pki_t *p)
{
    static const char server_ext[] = "subjectAltName=DNS:localhost,IP:127.0.0.1\n"
                                     "extendedKeyUsage=serverAuth\nkeyUsage=critical,digitalSignature\n";
    static const char client_ext[] = "extendedKeyUsage=clientAuth\nkeyUsage=critical,digitalSignature\n";
    memset(p, 0, sizeof *p);
    snprintf(p->dir, sizeof p->dir, "/tmp/bw-pki-XXXXXX");
    if (mkdtemp(p->dir) == NULL) {
        p->dir[0] = '\0';
        return -1;
    }
    path_in(p->ca, sizeof p->ca, p->dir, "ca.pem");
    path_in(p->ca_key, sizeof p->ca_key, p->dir, "ca-key.pem");
    path_in(p->server_cert, sizeof p->server_cert, p->dir, "server.pem");
    path_in(p->server_key, sizeof p->server_key, p->dir, "server-key.pem");
    path_in(p->client_cert, sizeof p->client_cert, p->dir, "client.pem");
    path_in(p->client_key, sizeof p->client_key, p->dir, "client-key.pem");
    path_in(p->other_ca, sizeof p->other_ca, p->dir, "other-ca.pem");
    path_in(p->other_ca_key, sizeof p->other_ca_key, p->dir, "other-ca-key.pem");
    path_in(p->other_client_cert, sizeof p->other_client_cert, p->dir, "other-client.pem");
    path_in(p->other_client_key, sizeof p->other_client_key, p->dir, "other-client-key.pem");
    if (make_ca(p->dir, "ca") == 0 && make_ca(p->dir, "other-ca") == 0 &&
        make_leaf(p->dir, "ca", "server", server_ext, 2) == 0 &&
        make_leaf(p->dir, "ca", "client", client_ext, 3) == 0 &&
        make_leaf(p->dir, "other-ca", "other-client", client_ext, 4) == 0)
        return 0;
    char log[160];
    path_in(log, sizeof log, p->dir, "openssl.log");
    char *text = bw_test_read_file(log, NULL);
    fprintf(stderr, "openssl failed:\n%s\n", text ? text : "(no output)");
    free(text);
    bw_test_pki_destroy(p);
    return -1;
}

void bw_test_pki_destroy(bw_test_pki_t *p)
{
    if (p->dir[0] != '\0' && getenv("BW_TEST_KEEP_LOGS") == NULL)
        bw_test_rm_rf(p->dir);
    p->dir[0] = '\0';
}

/* ---- NKeys ---- */

#define PREFIX_SEED (18 << 3)

static uint8_t prefix_byte(bw_nkey_type_t t)
{
    return t == BW_NKEY_OPERATOR ? 14 << 3 : t == BW_NKEY_ACCOUNT ? 0 : 20 << 3;
}

/* CRC-16/XMODEM (polynomial 0x1021, initial 0), what nkeys appends. */
static uint16_t crc16(const uint8_t *d, size_t n)
{
    uint16_t crc = 0;
    for (size_t i = 0; i < n; i++) {
        crc ^= (uint16_t)(d[i] << 8);
        for (int b = 0; b < 8; b++)
            crc = (crc & 0x8000) ? (uint16_t)((crc << 1) ^ 0x1021) : (uint16_t)(crc << 1);
    }
    return crc;
}

/* RFC 4648 base32 without padding into out (room for 8 * ceil(n / 5) + 1). */
static void base32(const uint8_t *d, size_t n, char *out)
{
    static const char abc[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    uint32_t acc = 0;
    int bits = 0;
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        acc = (acc << 8) | d[i];
        bits += 8;
        while (bits >= 5) {
            out[o++] = abc[(acc >> (bits - 5)) & 31];
            bits -= 5;
        }
    }
    if (bits > 0)
        out[o++] = abc[(acc << (5 - bits)) & 31];
    out[o] = '\0';
}

/* raw (n bytes, room for 2 more) + its CRC, base32-encoded into out. */
static void encode_with_crc(uint8_t *raw, size_t n, char *out)
{
    uint16_t crc = crc16(raw, n);
    raw[n] = (uint8_t)(crc & 0xff);
    raw[n + 1] = (uint8_t)(crc >> 8);
    base32(raw, n + 2, out);
}

int bw_test_nkey_create(bw_test_nkey_t *k, bw_nkey_type_t type)
{
    uint8_t seed[32], pub[32], raw[40];
    size_t publen = sizeof pub;
    EVP_PKEY *pkey = NULL;
    int rc = -1;
    if (RAND_bytes(seed, sizeof seed) != 1)
        goto out;
    pkey = EVP_PKEY_new_raw_private_key(EVP_PKEY_ED25519, NULL, seed, sizeof seed);
    if (pkey == NULL || EVP_PKEY_get_raw_public_key(pkey, pub, &publen) != 1 || publen != 32)
        goto out;
    uint8_t p = prefix_byte(type);
    raw[0] = (uint8_t)(PREFIX_SEED | (p >> 5));
    raw[1] = (uint8_t)((p & 31) << 3);
    memcpy(raw + 2, seed, 32);
    memcpy(k->raw, seed, 32);
    encode_with_crc(raw, 34, k->seed);
    raw[0] = p;
    memcpy(raw + 1, pub, 32);
    encode_with_crc(raw, 33, k->pub);
    rc = 0;
out:
    EVP_PKEY_free(pkey);
    OPENSSL_cleanse(seed, sizeof seed);
    return rc;
}

int bw_test_nkey_write_seed(const bw_test_nkey_t *k, const char *path)
{
    char text[80];
    snprintf(text, sizeof text, "%s\n", k->seed);
    return write_secret(path, text);
}

/* ---- JWTs ---- */

static char *base64url(const uint8_t *d, size_t n)
{
    static const char abc[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    char *out = malloc(4 * (n / 3 + 1) + 1);
    size_t o = 0, i = 0;
    for (; i + 2 < n; i += 3) {
        uint32_t v = (uint32_t)d[i] << 16 | (uint32_t)d[i + 1] << 8 | d[i + 2];
        out[o++] = abc[v >> 18];
        out[o++] = abc[(v >> 12) & 63];
        out[o++] = abc[(v >> 6) & 63];
        out[o++] = abc[v & 63];
    }
    if (i < n) {
        uint32_t v = (uint32_t)d[i] << 16 | (i + 1 < n ? (uint32_t)d[i + 1] << 8 : 0);
        out[o++] = abc[v >> 18];
        out[o++] = abc[(v >> 12) & 63];
        if (i + 1 < n)
            out[o++] = abc[(v >> 6) & 63];
    }
    out[o] = '\0';
    return out;
}

/* The jti nats-io/jwt sets: base32 SHA-512/256 of the claims serialised with an empty jti. */
static int set_jti(json_t *claims)
{
    uint8_t md[EVP_MAX_MD_SIZE];
    unsigned int mdlen = 0;
    char jti[128];
    json_object_set_new(claims, "jti", json_string(""));
    char *text = json_dumps(claims, JSON_COMPACT);
    int ok = text != NULL && EVP_Digest(text, strlen(text), md, &mdlen, EVP_sha512_256(), NULL) == 1;
    free(text);
    if (!ok)
        return -1;
    base32(md, mdlen, jti);
    json_object_set_new(claims, "jti", json_string(jti));
    return 0;
}

/* The ed25519 signature of input by the key whose seed is raw into sig (64 bytes). 0 on success. */
static int ed25519_sign(const unsigned char raw[32], const char *input, unsigned char sig[64])
{
    EVP_PKEY *pkey = EVP_PKEY_new_raw_private_key(EVP_PKEY_ED25519, NULL, raw, 32);
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    size_t len = 64;
    int ok = pkey != NULL && ctx != NULL && EVP_DigestSignInit(ctx, NULL, NULL, NULL, pkey) == 1 &&
             EVP_DigestSign(ctx, sig, &len, (const unsigned char *)input, strlen(input)) == 1 && len == 64;
    EVP_MD_CTX_free(ctx);
    EVP_PKEY_free(pkey);
    return ok ? 0 : -1;
}

/* Encodes and signs claims (stolen reference) with the issuer's key. */
static char *sign_jwt(json_t *claims, const bw_test_nkey_t *issuer)
{
    static const char header[] = "{\"typ\":\"JWT\",\"alg\":\"ed25519-nkey\"}";
    char *jwt = NULL, *body = NULL, *h64 = NULL, *c64 = NULL, *s64 = NULL;
    unsigned char sig[64];
    if (set_jti(claims) != 0 || (body = json_dumps(claims, JSON_COMPACT)) == NULL)
        goto out;
    h64 = base64url((const uint8_t *)header, strlen(header));
    c64 = base64url((const uint8_t *)body, strlen(body));
    size_t len = strlen(h64) + strlen(c64) + 2;
    char *signing_input = malloc(len);
    snprintf(signing_input, len, "%s.%s", h64, c64);
    if (ed25519_sign(issuer->raw, signing_input, sig) != 0) {
        free(signing_input);
        goto out;
    }
    s64 = base64url(sig, sizeof sig);
    len += strlen(s64) + 1;
    jwt = malloc(len);
    snprintf(jwt, len, "%s.%s", signing_input, s64);
    free(signing_input);
out:
    json_decref(claims);
    free(body);
    free(h64);
    free(c64);
    free(s64);
    return jwt;
}

static json_t *claims(const char *iss, const char *sub, const char *name, json_t *nats)
{
    return json_pack("{sIssssssso}", "iat", (json_int_t)time(NULL), "iss", iss, "sub", sub, "name", name,
                     "nats", nats);
}

char *bw_test_jwt_operator(const bw_test_nkey_t *op, const char *name)
{
    json_t *nats = json_pack("{sssi}", "type", "operator", "version", 2);
    return sign_jwt(claims(op->pub, op->pub, name, nats), op);
}

char *bw_test_jwt_account(const bw_test_nkey_t *op, const bw_test_nkey_t *acc, const char *name,
                          int jetstream)
{
    json_t *limits = json_pack("{sisisisisisbsisi}", "subs", -1, "data", -1, "payload", -1, "imports", -1,
                               "exports", -1, "wildcards", 1, "conn", -1, "leaf", -1);
    if (jetstream) {
        json_object_set_new(limits, "mem_storage", json_integer(-1));
        json_object_set_new(limits, "disk_storage", json_integer(-1));
        json_object_set_new(limits, "streams", json_integer(-1));
        json_object_set_new(limits, "consumer", json_integer(-1));
    }
    json_t *nats = json_pack("{sos{s{}s{}}sssi}", "limits", limits, "default_permissions", "pub", "sub",
                             "type", "account", "version", 2);
    return sign_jwt(claims(op->pub, acc->pub, name, nats), op);
}

char *bw_test_jwt_user(const bw_test_nkey_t *acc, const bw_test_nkey_t *user, const char *name)
{
    json_t *nats = json_pack("{s{}s{}sisisisssi}", "pub", "sub", "subs", -1, "data", -1, "payload", -1,
                             "type", "user", "version", 2);
    return sign_jwt(claims(acc->pub, user->pub, name, nats), acc);
}

int bw_test_creds_write(const char *path, const char *user_jwt, const bw_test_nkey_t *user)
{
    size_t len = strlen(user_jwt) + 512;
    char *text = malloc(len);
    snprintf(text, len,
             "-----BEGIN NATS USER JWT-----\n%s\n------END NATS USER JWT------\n\n"
             "************************* IMPORTANT *************************\n"
             "NKEY Seed printed below can be used to sign and prove identity.\n"
             "NKEYs are sensitive and should be treated as secrets.\n\n"
             "-----BEGIN USER NKEY SEED-----\n%s\n------END USER NKEY SEED------\n\n"
             "*************************************************************\n",
             user_jwt, user->seed);
    int rc = write_secret(path, text);
    free(text);
    return rc;
}

/* ---- client ---- */

static atomic_int refusals; /* permission violations reported on any connection made here */

static void on_async_error(natsConnection *nc, natsSubscription *sub, natsStatus err, void *closure)
{
    if (err == NATS_NOT_PERMITTED)
        atomic_fetch_add(&refusals, 1);
}

static natsStatus apply(natsOptions *o, const bw_test_auth_t *a)
{
    natsStatus s = natsOptions_SetURL(o, a->url);
    if (s == NATS_OK)
        s = natsOptions_SetTimeout(o, 2000);
    if (s == NATS_OK)
        s = natsOptions_SetErrorHandler(o, on_async_error, NULL);
    if (s == NATS_OK && a->ca != NULL)
        s = natsOptions_LoadCATrustedCertificates(o, a->ca);
    if (s == NATS_OK && a->cert != NULL)
        s = natsOptions_LoadCertificatesChain(o, a->cert, a->key);
    if (s == NATS_OK && (a->ca != NULL || a->cert != NULL))
        s = natsOptions_SetSecure(o, true);
    if (s == NATS_OK && a->nkey != NULL)
        s = natsOptions_SetNKeyFromSeed(o, a->nkey, a->nkey_seed);
    if (s == NATS_OK && a->creds != NULL)
        s = natsOptions_SetUserCredentialsFromFiles(o, a->creds, NULL);
    return s;
}

natsConnection *bw_test_auth_connect(const bw_test_auth_t *a)
{
    natsOptions *o = NULL;
    natsConnection *nc = NULL;
    natsStatus s = natsOptions_Create(&o);
    if (s == NATS_OK)
        s = apply(o, a);
    int64_t deadline = bw_test_now_ms() + CONNECT_TIMEOUT_MS;
    while (s == NATS_OK && (s = natsConnection_Connect(&nc, o)) == NATS_NO_SERVER &&
           bw_test_now_ms() < deadline)
        bw_test_sleep_ms(50);
    if (s != NATS_OK) {
        fprintf(stderr, "test client cannot connect: %s\n", nats_GetLastError(NULL));
        nc = NULL;
    }
    natsOptions_Destroy(o);
    return nc;
}

/* The result object of a message on the result subject: the payload, or its data in envelope form. */
static json_t *bare_result(natsMsg *m)
{
    json_t *j = json_loadb(natsMsg_GetData(m), (size_t)natsMsg_GetDataLength(m), 0, NULL);
    json_t *data = json_object_get(j, "data");
    if (json_is_object(data) && json_object_get(j, "kind") != NULL) {
        json_incref(data);
        json_decref(j);
        return data;
    }
    return j;
}

int bw_test_auth_submit(natsConnection *nc, const char *id, const char *type, const char *payload)
{
    natsMsg *msg = NULL;
    json_t *p = json_loads(payload, 0, NULL);
    json_t *a =
        json_pack("{sssssssssss{sssO*}s{ss}s{si}}", "version", "1", "assignment_id", id, "request_id", id,
                  "tenant_id", "acme", "trace_id", "0af7651916cd43dd8448eb211c80319c", "job", "type", type,
                  "payload", p, "executor", "provider_id", "test-provider", "options", "deadline_ms", 30000);
    char *body = json_dumps(a, JSON_COMPACT);
    json_decref(a);
    json_decref(p);
    natsStatus s = body != NULL ? natsMsg_Create(&msg, "caf.exec.assign.v1", NULL, body, (int)strlen(body))
                                : NATS_INVALID_ARG;
    if (s == NATS_OK)
        s = natsMsgHeader_Set(msg, "tenant_id", "acme");
    if (s == NATS_OK)
        s = natsMsgHeader_Set(msg, "version", "1");
    if (s == NATS_OK)
        s = natsConnection_PublishMsg(nc, msg);
    if (s == NATS_OK)
        s = natsConnection_Flush(nc);
    if (s != NATS_OK)
        fprintf(stderr, "submit %s: %s\n", id, nats_GetLastError(NULL));
    natsMsg_Destroy(msg);
    free(body);
    return s == NATS_OK ? 0 : -1;
}

json_t *bw_test_auth_wait_result(natsSubscription *sub, const char *id, int wait_ms)
{
    int64_t deadline = bw_test_now_ms() + wait_ms;
    while (bw_test_now_ms() < deadline) {
        natsMsg *m = NULL;
        if (natsSubscription_NextMsg(&m, sub, deadline - bw_test_now_ms()) != NATS_OK)
            break;
        json_t *r = bare_result(m);
        natsMsg_Destroy(m);
        const char *got = json_string_value(json_object_get(r, "assignment_id"));
        if (got != NULL && strcmp(got, id) == 0)
            return r;
        json_decref(r);
    }
    return NULL;
}

json_t *bw_test_auth_echo(natsConnection *nc, const char *id, int wait_ms)
{
    natsSubscription *sub = NULL;
    json_t *result = NULL;
    char payload[200];
    snprintf(payload, sizeof payload, "{\"probe\":\"%s\"}", id);
    if (natsConnection_SubscribeSync(&sub, nc, "caf.exec.result.v1") == NATS_OK &&
        natsConnection_Flush(nc) == NATS_OK && bw_test_auth_submit(nc, id, "echo", payload) == 0)
        result = bw_test_auth_wait_result(sub, id, wait_ms);
    natsSubscription_Destroy(sub);
    return result;
}

int bw_test_auth_publish_refused(natsConnection *nc, const char *subject, const char *data)
{
    int before = atomic_load(&refusals);
    natsStatus s = natsConnection_PublishString(nc, subject, data);
    if (s != NATS_OK)
        return -1;
    /* nats.c records the server's -ERR before it reads the PONG of this flush (one connection's protocol
       is in order), but reports it on its callback thread: the last error says at once, the callback
       confirms it was this publish's. */
    natsConnection_FlushTimeout(nc, 5000);
    const char *why = NULL;
    if (natsConnection_GetLastError(nc, &why) != NATS_NOT_PERMITTED || why == NULL ||
        strstr(why, subject) == NULL)
        return 0;
    for (int64_t end = bw_test_now_ms() + 5000; atomic_load(&refusals) == before && bw_test_now_ms() < end;)
        bw_test_sleep_ms(10);
    return atomic_load(&refusals) > before ? 1 : -1;
}
