/*
 * The canonical tar output shared by _flat (the two-pass writer) and _scan (the one-pass
 * emitter): a buffered fd writer and tarstream.TarWriter's headers (tarstream._header),
 * compiled into both extensions from tarout.c.
 *
 * An `Out` is used either with the GIL held (errors raise a Python exception, writes
 * release the GIL) or from code that released it (`nogil`: errors are only kept in
 * `error`, an errno value, for the caller to raise once it holds the GIL again).
 */
#ifndef IMAGEGW_TAROUT_H
#define IMAGEGW_TAROUT_H

#include <stddef.h>
#include <stdint.h>

#define TAROUT_HIDDEN __attribute__((visibility("hidden")))
#define TAR_BLOCK 512
#define OUT_BUFFER (1 << 20)
/* out_put writes this many bytes or more from where they lie, not through the buffer. */
#define OUT_DIRECT (64 << 10)
#define USTAR_MAX_NUMBER 8589934591LL /* 8**11 - 1 */

/* A byte string that points into memory owned elsewhere (an index's bytes). */
typedef struct {
	const char *ptr;
	uint32_t len;
} Str;

typedef struct {
	int fd;
	char *buf; /* OUT_BUFFER bytes */
	size_t len;
	int nogil; /* the GIL is released: keep errors in `error`, raise nothing */
	int error; /* errno of the first failure (ENOMEM when out of memory) */
} Out;

/* Each returns 0, or -1 with `error` set (and, GIL held, a Python exception). */
TAROUT_HIDDEN int out_flush(Out *o);
TAROUT_HIDDEN int out_put(Out *o, const void *data, size_t count);
TAROUT_HIDDEN int out_zeros(Out *o, size_t count);
/* tarstream._header: one member's header(s), a PAX header first when needed. */
TAROUT_HIDDEN int put_header(Out *o, Str name, char kind, uint32_t mode, int64_t mtime,
			     uint64_t size, Str link);
/* Sets the Python exception of a failure kept in `error` (GIL held). */
TAROUT_HIDDEN void out_raise(const Out *o);

#endif
