/*
 * vdiskfs_rados: the few librados calls vdiskfs' rados store needs, as promises. Every call runs on Node's
 * thread pool (napi_async_work), never on the event loop that serves FUSE. librados' own calls are
 * synchronous here: one thread-pool thread per call in flight (UV_THREADPOOL_SIZE bounds the depth).
 *
 *   connect(confPath, pool) -> Promise<handle>      read(handle, obj, buf, offset) -> Promise<bytesRead>
 *   write(handle, obj, buf, offset) -> Promise<void> writeFull(handle, obj, buf) -> Promise<void>
 *   remove(handle, obj) -> Promise<void> (absent is fine)   close(handle) -> Promise<void>
 *   size(handle, obj) -> Promise<number> (-1: no such object)
 *   lock(handle, obj, name, cookie, description, seconds, renew) -> Promise<void>: an exclusive lock that
 *     lapses after `seconds` unless taken again with renew; EBUSY while another cookie holds it
 *   unlock(handle, obj, name, cookie) -> Promise<void> (not held is fine)
 *   list(handle, prefix) -> Promise<string[]>: the names of the pool's objects that start with prefix
 * Errors reject with an Error whose `errno` is librados' (positive) errno and `code` its name where known.
 */
#include <node_api.h>
#include <rados/librados.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <stdio.h>
#include <stdbool.h>
#include <sys/time.h>

typedef struct {
  rados_t cluster;
  rados_ioctx_t io;
  int open;
} conn_t;

enum op_kind { OP_CONNECT, OP_READ, OP_WRITE, OP_WRITE_FULL, OP_REMOVE, OP_CLOSE, OP_SIZE, OP_LOCK, OP_UNLOCK, OP_LIST };

typedef struct {
  enum op_kind kind;
  napi_deferred deferred;
  napi_async_work work;
  napi_ref buf_ref;   /* keeps the JS buffer alive while the thread uses it */
  conn_t *conn;
  char *conf, *pool, *obj;
  char *name, *cookie, *desc; /* locks */
  int seconds, renew;
  int64_t size;
  char **names;       /* OP_LIST: the names found, count of them in `count` */
  size_t count, cap;
  char *data;
  size_t len;
  uint64_t off;
  int rc;             /* librados result (negative errno) or bytes read */
  const char *what;
} op_t;

#define CHECK(call) do { if ((call) != napi_ok) { napi_throw_error(env, NULL, #call " failed"); return NULL; } } while (0)

static char *get_string(napi_env env, napi_value v) {
  size_t n = 0;
  if (napi_get_value_string_utf8(env, v, NULL, 0, &n) != napi_ok) return NULL;
  char *s = malloc(n + 1);
  if (!s) return NULL;
  napi_get_value_string_utf8(env, v, s, n + 1, &n);
  return s;
}

static void execute(napi_env env, void *p) {
  (void)env;
  op_t *op = p;
  switch (op->kind) {
    case OP_CONNECT: {
      conn_t *c = calloc(1, sizeof(conn_t));
      if (!c) { op->rc = -ENOMEM; op->what = "calloc"; return; }
      op->conn = c;
      if ((op->rc = rados_create(&c->cluster, NULL)) < 0) { op->what = "rados_create"; return; }
      if ((op->rc = rados_conf_read_file(c->cluster, op->conf)) < 0) { op->what = "rados_conf_read_file"; rados_shutdown(c->cluster); return; }
      rados_conf_set(c->cluster, "ms_mon_client_mode", "crc");
      rados_conf_set(c->cluster, "client_mount_timeout", "30");
      rados_conf_set(c->cluster, "admin_socket", ""); /* a daemon may hold several connections: no socket to collide over */
      if ((op->rc = rados_connect(c->cluster)) < 0) { op->what = "rados_connect"; rados_shutdown(c->cluster); return; }
      if ((op->rc = rados_ioctx_create(c->cluster, op->pool, &c->io)) < 0) { op->what = "rados_ioctx_create"; rados_shutdown(c->cluster); return; }
      c->open = 1;
      return;
    }
    case OP_READ:
      op->rc = rados_read(op->conn->io, op->obj, op->data, op->len, op->off);
      if (op->rc == -ENOENT) op->rc = 0; /* an object never written reads as nothing (the caller zero-fills) */
      op->what = "rados_read";
      return;
    case OP_WRITE:
      op->rc = rados_write(op->conn->io, op->obj, op->data, op->len, op->off);
      op->what = "rados_write";
      return;
    case OP_WRITE_FULL:
      op->rc = rados_write_full(op->conn->io, op->obj, op->data, op->len);
      op->what = "rados_write_full";
      return;
    case OP_REMOVE:
      op->rc = rados_remove(op->conn->io, op->obj);
      if (op->rc == -ENOENT) op->rc = 0;
      op->what = "rados_remove";
      return;
    case OP_SIZE: {
      uint64_t size = 0; time_t mtime;
      op->rc = rados_stat(op->conn->io, op->obj, &size, &mtime);
      op->size = op->rc == -ENOENT ? -1 : (int64_t)size;
      if (op->rc == -ENOENT) op->rc = 0;
      op->what = "rados_stat";
      return;
    }
    case OP_LOCK: {
      struct timeval tv = { op->seconds, 0 };
      op->rc = rados_lock_exclusive(op->conn->io, op->obj, op->name, op->cookie, op->desc, &tv, op->renew ? LIBRADOS_LOCK_FLAG_RENEW : 0);
      op->what = "rados_lock_exclusive";
      return;
    }
    case OP_LIST: {
      rados_list_ctx_t ctx;
      size_t plen = strlen(op->obj);
      op->what = "rados_nobjects_list";
      if ((op->rc = rados_nobjects_list_open(op->conn->io, &ctx)) < 0) return;
      const char *entry;
      int rc;
      while ((rc = rados_nobjects_list_next(ctx, &entry, NULL, NULL)) == 0) {
        if (strncmp(entry, op->obj, plen) != 0) continue;
        if (op->count == op->cap) {
          size_t cap = op->cap ? op->cap * 2 : 1024;
          char **n = realloc(op->names, cap * sizeof(char *));
          if (!n) { rc = -ENOMEM; break; }
          op->names = n; op->cap = cap;
        }
        if (!(op->names[op->count] = strdup(entry))) { rc = -ENOMEM; break; }
        op->count++;
      }
      rados_nobjects_list_close(ctx);
      op->rc = rc == -ENOENT ? 0 : rc;
      return;
    }
    case OP_UNLOCK:
      op->rc = rados_unlock(op->conn->io, op->obj, op->name, op->cookie);
      if (op->rc == -ENOENT) op->rc = 0;
      op->what = "rados_unlock";
      return;
    case OP_CLOSE:
      if (op->conn->open) {
        rados_ioctx_destroy(op->conn->io);
        rados_shutdown(op->conn->cluster);
        op->conn->open = 0;
      }
      op->rc = 0;
      return;
  }
}

static void finalize_conn(napi_env env, void *data, void *hint) {
  (void)env; (void)hint;
  conn_t *c = data;
  if (c->open) { rados_ioctx_destroy(c->io); rados_shutdown(c->cluster); }
  free(c);
}

static void complete(napi_env env, napi_status status, void *p) {
  op_t *op = p;
  napi_value result;
  if (status != napi_ok || op->rc < 0) {
    int err = op->rc < 0 ? -op->rc : EIO;
    char msg[256];
    snprintf(msg, sizeof msg, "%s: %s", op->what ? op->what : "rados", strerror(err));
    napi_value m, e, n;
    napi_create_string_utf8(env, msg, NAPI_AUTO_LENGTH, &m);
    napi_create_error(env, NULL, m, &e);
    napi_create_int32(env, err, &n);
    napi_set_named_property(env, e, "errno", n);
    napi_reject_deferred(env, op->deferred, e);
    if (op->kind == OP_CONNECT && op->conn) free(op->conn);
  } else if (op->kind == OP_CONNECT) {
    napi_create_external(env, op->conn, finalize_conn, NULL, &result);
    napi_resolve_deferred(env, op->deferred, result);
  } else if (op->kind == OP_READ) {
    napi_create_int64(env, op->rc, &result);
    napi_resolve_deferred(env, op->deferred, result);
  } else if (op->kind == OP_LIST) {
    napi_create_array_with_length(env, op->count, &result);
    for (size_t i = 0; i < op->count; i++) {
      napi_value str;
      napi_create_string_utf8(env, op->names[i], NAPI_AUTO_LENGTH, &str);
      napi_set_element(env, result, (uint32_t)i, str);
    }
    napi_resolve_deferred(env, op->deferred, result);
  } else if (op->kind == OP_SIZE) {
    napi_create_int64(env, op->size, &result);
    napi_resolve_deferred(env, op->deferred, result);
  } else {
    napi_get_undefined(env, &result);
    napi_resolve_deferred(env, op->deferred, result);
  }
  if (op->buf_ref) napi_delete_reference(env, op->buf_ref);
  napi_delete_async_work(env, op->work);
  free(op->conf); free(op->pool); free(op->obj);
  free(op->name); free(op->cookie); free(op->desc);
  for (size_t i = 0; i < op->count; i++) free(op->names[i]);
  free(op->names);
  free(op);
}

static napi_value start(napi_env env, op_t *op) {
  napi_value promise, name;
  CHECK(napi_create_promise(env, &op->deferred, &promise));
  CHECK(napi_create_string_utf8(env, "vdiskfs_rados", NAPI_AUTO_LENGTH, &name));
  CHECK(napi_create_async_work(env, NULL, name, execute, complete, op, &op->work));
  CHECK(napi_queue_async_work(env, op->work));
  return promise;
}

static conn_t *get_conn(napi_env env, napi_value v) {
  void *c = NULL;
  if (napi_get_value_external(env, v, &c) != napi_ok || !c) return NULL;
  if (!((conn_t *)c)->open) return NULL;
  return c;
}

static napi_value js_connect(napi_env env, napi_callback_info info) {
  size_t argc = 2; napi_value argv[2];
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  op_t *op = calloc(1, sizeof(op_t));
  op->kind = OP_CONNECT;
  op->conf = get_string(env, argv[0]);
  op->pool = get_string(env, argv[1]);
  if (!op->conf || !op->pool) { free(op->conf); free(op->pool); free(op); napi_throw_type_error(env, NULL, "connect(confPath, pool)"); return NULL; }
  return start(env, op);
}

/*
 * The op of a call (handle, obj, ...): up to `*argc` arguments into argv (*argc becomes how many were
 * given), its connection and object name; NULL with a JS exception when the connection is closed.
 */
static op_t *new_op(napi_env env, napi_callback_info info, size_t *argc, napi_value *argv, enum op_kind kind) {
  if (napi_get_cb_info(env, info, argc, argv, NULL, NULL) != napi_ok) { napi_throw_error(env, NULL, "napi_get_cb_info failed"); return NULL; }
  conn_t *c = get_conn(env, argv[0]);
  if (!c) { napi_throw_error(env, NULL, "rados connection is closed"); return NULL; }
  op_t *op = calloc(1, sizeof(op_t));
  if (!op) { napi_throw_error(env, NULL, "out of memory"); return NULL; }
  op->kind = kind; op->conn = c; op->obj = get_string(env, argv[1]);
  return op;
}

/* read/write/writeFull(handle, obj, buf[, offset]) */
static napi_value io_call(napi_env env, napi_callback_info info, enum op_kind kind) {
  size_t argc = 4; napi_value argv[4];
  op_t *op = new_op(env, info, &argc, argv, kind);
  if (!op) return NULL;
  void *data; size_t len;
  if (napi_get_buffer_info(env, argv[2], &data, &len) != napi_ok) { free(op->obj); free(op); napi_throw_type_error(env, NULL, "buffer expected"); return NULL; }
  op->data = data; op->len = len;
  if (argc > 3) { int64_t off = 0; napi_get_value_int64(env, argv[3], &off); op->off = (uint64_t)off; }
  napi_create_reference(env, argv[2], 1, &op->buf_ref);
  return start(env, op);
}

static napi_value js_read(napi_env env, napi_callback_info info) { return io_call(env, info, OP_READ); }
static napi_value js_write(napi_env env, napi_callback_info info) { return io_call(env, info, OP_WRITE); }
static napi_value js_write_full(napi_env env, napi_callback_info info) { return io_call(env, info, OP_WRITE_FULL); }

/* remove/list/size(handle, obj-or-prefix) */
static napi_value obj_call(napi_env env, napi_callback_info info, enum op_kind kind) {
  size_t argc = 2; napi_value argv[2];
  op_t *op = new_op(env, info, &argc, argv, kind);
  return op ? start(env, op) : NULL;
}

static napi_value js_remove(napi_env env, napi_callback_info info) { return obj_call(env, info, OP_REMOVE); }
static napi_value js_list(napi_env env, napi_callback_info info) { return obj_call(env, info, OP_LIST); }
static napi_value js_size(napi_env env, napi_callback_info info) { return obj_call(env, info, OP_SIZE); }

/* lock(handle, obj, name, cookie, desc, seconds, renew) / unlock(handle, obj, name, cookie) */
static napi_value lock_call(napi_env env, napi_callback_info info, enum op_kind kind) {
  size_t argc = 7; napi_value argv[7];
  op_t *op = new_op(env, info, &argc, argv, kind);
  if (!op) return NULL;
  op->name = get_string(env, argv[2]);
  op->cookie = get_string(env, argv[3]);
  if (kind == OP_LOCK) {
    bool renew = false;
    op->desc = get_string(env, argv[4]);
    napi_get_value_int32(env, argv[5], &op->seconds);
    napi_get_value_bool(env, argv[6], &renew);
    op->renew = renew;
  }
  return start(env, op);
}

static napi_value js_lock(napi_env env, napi_callback_info info) { return lock_call(env, info, OP_LOCK); }
static napi_value js_unlock(napi_env env, napi_callback_info info) { return lock_call(env, info, OP_UNLOCK); }

static napi_value js_close(napi_env env, napi_callback_info info) {
  size_t argc = 1; napi_value argv[1];
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  void *c = NULL;
  CHECK(napi_get_value_external(env, argv[0], &c));
  op_t *op = calloc(1, sizeof(op_t));
  op->kind = OP_CLOSE; op->conn = c;
  return start(env, op);
}

static napi_value init(napi_env env, napi_value exports) {
  napi_property_descriptor props[] = {
    {"connect", NULL, js_connect, NULL, NULL, NULL, napi_default, NULL},
    {"read", NULL, js_read, NULL, NULL, NULL, napi_default, NULL},
    {"write", NULL, js_write, NULL, NULL, NULL, napi_default, NULL},
    {"writeFull", NULL, js_write_full, NULL, NULL, NULL, napi_default, NULL},
    {"remove", NULL, js_remove, NULL, NULL, NULL, napi_default, NULL},
    {"close", NULL, js_close, NULL, NULL, NULL, napi_default, NULL},
    {"size", NULL, js_size, NULL, NULL, NULL, napi_default, NULL},
    {"lock", NULL, js_lock, NULL, NULL, NULL, napi_default, NULL},
    {"unlock", NULL, js_unlock, NULL, NULL, NULL, napi_default, NULL},
    {"list", NULL, js_list, NULL, NULL, NULL, napi_default, NULL},
  };
  napi_define_properties(env, exports, sizeof props / sizeof props[0], props);
  return exports;
}

NAPI_MODULE(NODE_GYP_MODULE_NAME, init)
