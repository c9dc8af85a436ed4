/**
 * The NBD protocol's wire constants and message layouts: fixed newstyle handshake,
 * option haggling and the transmission phase with simple replies. Every field is
 * big-endian (network byte order). Names are the spec's own.
 *
 * @see NBD protocol, doc/proto.md of NetworkBlockDevice/nbd ("Fixed newstyle
 *   negotiation", "Transmission", "Values")
 */

/** `NBDMAGIC`, also `INIT_PASSWD`: the first 8 bytes a server sends. */
export const NBDMAGIC = 0x4e42444d41474943n;
/** `IHAVEOPT`: the newstyle magic, sent by the server after NBDMAGIC and by the client before each option. */
export const IHAVEOPT = 0x49484156454f5054n;
/** Magic of every option reply in fixed newstyle. */
export const NBD_REP_MAGIC = 0x3e889045565a9n;
/** `NBD_REQUEST_MAGIC`: the first 4 bytes of every transmission request. */
export const NBD_REQUEST_MAGIC = 0x25609513;
/** `NBD_SIMPLE_REPLY_MAGIC`: the first 4 bytes of every simple reply. */
export const NBD_SIMPLE_REPLY_MAGIC = 0x67446698;

/** Handshake flags (16 bits, server → client). */
export const NBD_FLAG_FIXED_NEWSTYLE = 1 << 0;
export const NBD_FLAG_NO_ZEROES = 1 << 1;
/** Client flags (32 bits, client → server); any other bit makes the server drop the connection. */
export const NBD_FLAG_C_FIXED_NEWSTYLE = 1 << 0;
export const NBD_FLAG_C_NO_ZEROES = 1 << 1;

/** Transmission flags (16 bits, in `NBD_INFO_EXPORT` or the `NBD_OPT_EXPORT_NAME` reply). */
export const NBD_FLAG_HAS_FLAGS = 1 << 0;
export const NBD_FLAG_READ_ONLY = 1 << 1;
export const NBD_FLAG_SEND_FLUSH = 1 << 2;
export const NBD_FLAG_SEND_FUA = 1 << 3;
export const NBD_FLAG_SEND_TRIM = 1 << 5;
export const NBD_FLAG_SEND_WRITE_ZEROES = 1 << 6;
export const NBD_FLAG_CAN_MULTI_CONN = 1 << 8;

/** Option types. */
export const NBD_OPT_EXPORT_NAME = 1;
export const NBD_OPT_ABORT = 2;
export const NBD_OPT_LIST = 3;
export const NBD_OPT_INFO = 6;
export const NBD_OPT_GO = 7;
export const NBD_OPT_STRUCTURED_REPLY = 8;

/** Option reply types; errors have bit 31 set. */
export const NBD_REP_ACK = 1;
export const NBD_REP_SERVER = 2;
export const NBD_REP_INFO = 3;
export const NBD_REP_ERR_UNSUP = 2 ** 31 + 1;
export const NBD_REP_ERR_INVALID = 2 ** 31 + 3;
export const NBD_REP_ERR_UNKNOWN = 2 ** 31 + 6;

/** Information types of `NBD_REP_INFO` (16 bits). */
export const NBD_INFO_EXPORT = 0;
export const NBD_INFO_NAME = 1;
export const NBD_INFO_DESCRIPTION = 2;
export const NBD_INFO_BLOCK_SIZE = 3;

/** Command types (16 bits). */
export const NBD_CMD_READ = 0;
export const NBD_CMD_WRITE = 1;
export const NBD_CMD_DISC = 2;
export const NBD_CMD_FLUSH = 3;
export const NBD_CMD_TRIM = 4;
export const NBD_CMD_WRITE_ZEROES = 6;

/** Command flags (16 bits). */
export const NBD_CMD_FLAG_FUA = 1 << 0;
export const NBD_CMD_FLAG_NO_HOLE = 1 << 1;

/** Error values of a reply (the spec's `NBD_E*`, equal to the usual errno). */
export const NBD_EPERM = 1;
export const NBD_EIO = 5;
export const NBD_EINVAL = 22;
export const NBD_ENOSPC = 28;

/**
 * Largest READ or WRITE payload served: 2^25 bytes (32 MiB), what the spec says a
 * client desiring interoperability stays within, and the maximum block size
 * advertised in `NBD_INFO_BLOCK_SIZE`. A WRITE with a longer payload is a hard
 * disconnect (the spec allows it for payloads it deems a denial of service).
 */
export const NBD_MAX_PAYLOAD = 2 ** 25;

/**
 * Option request (client → server), 16 bytes then `length` bytes of data:
 * `u64 magic (IHAVEOPT); u32 option; u32 length`.
 */
export const OPTION_REQUEST = Object.freeze({ magic: 0, option: 8, length: 12, size: 16 });

/**
 * Option reply (server → client), 20 bytes then `length` bytes of data:
 * `u64 magic (0x3e889045565a9); u32 option; u32 type; u32 length`.
 */
export const OPTION_REPLY = Object.freeze({ magic: 0, option: 8, type: 12, length: 16, size: 20 });

/**
 * Transmission request (client → server), 28 bytes, then `length` bytes of data
 * for `NBD_CMD_WRITE`: `u32 magic; u16 flags; u16 type; u64 handle; u64 offset; u32 length`.
 */
export const REQUEST = Object.freeze({ magic: 0, flags: 4, type: 6, handle: 8, offset: 16, length: 24, size: 28 });

/**
 * Simple reply (server → client), 16 bytes, then the data of a successful
 * `NBD_CMD_READ`: `u32 magic; u32 error; u64 handle`.
 */
export const SIMPLE_REPLY = Object.freeze({ magic: 0, error: 4, handle: 8, size: 16 });

/** Size of the handle (opaque to the server, echoed in the reply). */
export const HANDLE_SIZE = 8;
