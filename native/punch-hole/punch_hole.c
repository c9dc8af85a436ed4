/*
 * punchHole(fd, offset, length) -> 0 or -errno
 *
 * Deallocates the byte range [offset, offset + length) of an open regular file:
 * fallocate(2) with FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE. The file's size is
 * unchanged and later reads of the range return zeroes; blocks wholly inside it are
 * freed, partial blocks at its ends are zeroed by the file system. Returns 0, or
 * the negated errno (-EOPNOTSUPP when the file system cannot punch holes, -EBADF,
 * -EINVAL...), which JavaScript names with util.getSystemErrorName. Throws a
 * TypeError only for arguments that are not numbers.
 *
 * Node's fs has no fallocate (reference/node-facts.md, "Files"); this is pvio's
 * RawFileStore discard (blkback/raw-file-store.ts), as Linux blkback's
 * dispatch_discard_io ends in blkdev_issue_discard.
 */
#include <errno.h>
#include <fcntl.h>
#include <linux/falloc.h>
#include <node_api.h>

static napi_value punch_hole(napi_env env, napi_callback_info info) {
  size_t argc = 3;
  napi_value argv[3];
  int32_t fd;
  int64_t offset, length;
  napi_value result;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc != 3
      || napi_get_value_int32(env, argv[0], &fd) != napi_ok
      || napi_get_value_int64(env, argv[1], &offset) != napi_ok
      || napi_get_value_int64(env, argv[2], &length) != napi_ok) {
    napi_throw_type_error(env, NULL, "punchHole(fd, offset, length) takes three numbers");
    return NULL;
  }
  int r = fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, (off_t)offset, (off_t)length);
  napi_create_int32(env, r == 0 ? 0 : -errno, &result);
  return result;
}

NAPI_MODULE_INIT() {
  napi_value fn;
  napi_create_function(env, "punchHole", NAPI_AUTO_LENGTH, punch_hole, NULL, &fn);
  napi_set_named_property(env, exports, "punchHole", fn);
  return exports;
}
