/*
 * The one-pass flatten's state in C (issue 21): streaming._NewestFirst and the checks of
 * StreamedFlatten, over compact indexes. Compiled into both extensions from onepass.c:
 * _scan writes the visible entries while it scans each layer (newest first), _flat
 * writes the deferred hardlinks and verifies the result against its exact merge; the
 * state travels between them in a capsule (ONEPASS_CAPSULE) made by _scan.Emitter.
 *
 * No Python object per member. Every path is a reference into a compact index's bytes
 * (the entries section of layer `layer`, at `off`): the layer being scanned is in the
 * scanner's growing buffer until the layer ends, then in its index bytes (same layout,
 * so references stay valid). One table maps each path to its record: what went out
 * under it (_NewestFirst.emitted, implicit_dirs, deferred_links) and whether the newer
 * layers hide it (hidden, hidden_below: two flag bits), so an entry costs one lookup
 * while its layer is read (and one per ancestor when its directory is not settled in
 * this layer yet: onepass.c), none when its layer hides it. Memory: a 16-byte record
 * and an 8-byte slot (the table at most 70 % full) per path written or hidden; a path
 * hidden only (overwritten, whited out) is the only cost the hidden sets add; plus 4
 * bytes per entry of the layer being read (entry_ids) and the 64 KiB settled cache.
 */
#ifndef IMAGEGW_ONEPASS_H
#define IMAGEGW_ONEPASS_H

#include <stddef.h>
#include <stdint.h>

#include "tarout.h"

#ifndef Py_PYTHON_H
#error "include Python.h first"
#endif

#define ONEPASS_HIDDEN __attribute__((visibility("hidden")))
#define ONEPASS_CAPSULE "imagegw.pipeline.native.onepass"

/* The compact entry layout (compact.py): u8 kind, u16 path length, u16 link length, path,
   link, then LEB128 varints: mode, zigzag mtime, size, ordinal, offset + 1. The path is
   ENTRY_HEAD bytes from the entry's start, so a reference to it also finds its entry. */
#define ENTRY_HEAD 5
#define VARINT_MAX 10 /* bytes of a 64-bit varint */
/* The fewest bytes an entry takes: its head, a 1-byte path and five 1-byte varints. */
#define ENTRY_MIN (ENTRY_HEAD + 1 + 5)
enum { EK_FILE = 0, EK_DIR = 1, EK_SYMLINK = 2, EK_HARDLINK = 3 };

/* An entry's numeric fields (entry_fields). */
typedef struct {
	uint32_t mode;
	int64_t mtime;
	uint64_t size, ordinal;
	int64_t offset; /* of the member's data in the decompressed layer; -1: unknown */
} EntryFields;

static inline uint32_t entry_path_len(const uint8_t *e)
{
	return (uint32_t)e[1] | (uint32_t)e[2] << 8;
}

static inline uint32_t entry_link_len(const uint8_t *e)
{
	return (uint32_t)e[3] | (uint32_t)e[4] << 8;
}

static inline const uint8_t *entry_link(const uint8_t *e)
{
	return e + ENTRY_HEAD + entry_path_len(e);
}

/* A varint of an entry already checked (by flat.c's parser, or written by the scanner):
   the loop stops at 10 bytes whatever it reads. Returns the byte after it. */
static inline const uint8_t *varint_at(const uint8_t *p, uint64_t *value)
{
	uint64_t v = 0;
	for (int shift = 0; shift < 64; shift += 7) {
		uint8_t b = *p++;
		v |= (uint64_t)(b & 0x7f) << shift;
		if (!(b & 0x80))
			break;
	}
	*value = v;
	return p;
}

/* The numeric fields of the checked entry at `e`; returns where the next entry starts. */
static inline const uint8_t *entry_fields(const uint8_t *e, EntryFields *f)
{
	uint64_t mode, mtime, offset;
	const uint8_t *p = entry_link(e) + entry_link_len(e);
	p = varint_at(p, &mode);
	p = varint_at(p, &mtime);
	p = varint_at(p, &f->size);
	p = varint_at(p, &f->ordinal);
	p = varint_at(p, &offset);
	f->mode = (uint32_t)mode;
	f->mtime = (int64_t)((mtime >> 1) ^ (0 - (mtime & 1)));
	f->offset = (int64_t)(offset - 1);
	return p;
}
enum { MK_WHITEOUT = 0, MK_OPAQUE = 1 };

/* A byte string in an index: the entries section of layer `layer`, from `off`. */
typedef struct {
	uint32_t layer, off, len;
} Ref;

/* What a path went out as (streaming._NewestFirst's emitted / deferred_links). */
enum { R_NONE = 0, R_FILE, R_DIR, R_SYMLINK, R_HARDLINK, R_DEFERRED };

/* The record's flags: in implicit_dirs, hidden, hidden_below. */
enum { F_IMPLICIT = 1, F_HIDDEN = 2, F_HIDDEN_BELOW = 4 };

/* One path: written (or deferred, or made implicitly), and/or hidden by newer layers. */
typedef struct {
	uint32_t layer;    /* where the path's bytes are */
	uint32_t path;     /* their offset in that layer's entries section: an entry's path
			      (R_FILE..R_DEFERRED: that entry's; implicit dirs: a prefix of a
			      descendant's) or a marker's */
	uint16_t path_len;
	uint8_t kind;      /* R_* */
	uint8_t flags;     /* F_* */
	uint32_t target;   /* R_HARDLINK: the record of the file it links to */
} Record;

typedef struct {
	uint32_t hash, id; /* id: 1 + the item's number; 0: an empty slot */
} Slot;

typedef struct {
	Slot *slots;
	uint32_t mask, count;
} Table;

/* Directories whose ancestors this layer's entries need not check again (onepass.c's
   settled_*): direct-mapped by the directory's hash, valid for one layer. */
#define SETTLED_SLOTS 8192
typedef struct {
	uint32_t id;    /* the directory's record id */
	uint32_t layer; /* 1 + the layer it holds for; 0: empty */
} Settled;

/* Why the speculation failed (the messages of streaming.py). */
enum {
	FAIL_NONE = 0,
	FAIL_BELOW_NON_DIR, /* "{path!r} lies below the non-directory {ancestor!r}" */
	FAIL_TWICE,         /* "{path!r} appears twice in one layer" */
	FAIL_DIR_AND_OTHER, /* "{path!r} is a directory and something else" */
	FAIL_LIMIT,         /* "the data written passes the unpacked-size limit" */
	FAIL_OUTPUT,        /* writing failed: out.error */
	FAIL_TOO_LARGE,     /* a layer's entries pass 4 GiB (references are 32-bit) */
};

typedef struct {
	Out out;
	uint64_t max_data_bytes, data_bytes;
	uint32_t layers;
	const uint8_t **base; /* each layer's entries section (NULL: not read yet) */
	uint32_t current;     /* the layer being scanned */
	/* every path written, deferred, made implicitly or hidden: path -> record */
	Record *records;
	uint32_t record_count, record_cap;
	Table paths;
	int paths_forgotten; /* onepass_forget_paths: no path can be looked up or added */
	uint32_t files, links; /* R_FILE and R_HARDLINK records (len(written), len(links)) */
	uint32_t deferred;     /* hardlinks left for the end (deferred_links was not empty) */
	int root_hidden_below; /* "" in hidden_below (an opaque marker at the root) */
	/* the record id of each entry of the layer being scanned, in order (0: none), so
	   the layer hides its entries' paths without looking them up again */
	uint32_t *entry_ids;
	uint32_t entry_id_count, entry_id_cap;
	Settled settled[SETTLED_SLOTS];
	/* _clear_parent and _claimed_parent (has_*: not None) */
	int has_clear, has_claimed;
	Ref clear, claimed;
	/* the failure: its kind and the paths its message names (copies) */
	int fail;
	char *fail_path, *fail_other;
	uint32_t fail_path_len, fail_other_len;
} onepass_t;

ONEPASS_HIDDEN onepass_t *onepass_new(int fd, uint64_t max_data_bytes, uint32_t layers);
ONEPASS_HIDDEN void onepass_free(onepass_t *op);
/* Layer `layer` is scanned next (its entries go to onepass_entry, then onepass_hide). */
ONEPASS_HIDDEN void onepass_begin_layer(onepass_t *op, uint32_t layer);
ONEPASS_HIDDEN const uint8_t *onepass_bytes(const onepass_t *op, Ref ref);
ONEPASS_HIDDEN Ref record_path(const Record *r);
ONEPASS_HIDDEN const uint8_t *record_entry(const onepass_t *op, const Record *r);
/* Starts loading the table slot where the lookup of `path` begins (a hint: the scanner
   gives the next member's name while it parses the header, hiding the cache miss). */
ONEPASS_HIDDEN void onepass_prefetch(const onepass_t *op, const uint8_t *path, uint32_t len);
/* The record of a path; NULL when it has none. */
ONEPASS_HIDDEN Record *onepass_find(const onepass_t *op, const uint8_t *path, uint32_t len);

/* One admitted entry of the layer being scanned, at `entry` in its entries section
   (already there): _NewestFirst.read_layer's body. Writes it when visible; for a file
   whose header went out, *data is set: the caller writes its data and padding next.
   -1 when it failed (op->fail). No GIL needed when op->out.nogil. */
ONEPASS_HIDDEN int onepass_entry(onepass_t *op, size_t entry, int member_type, int *data);
/* _NewestFirst._hide of the layer just read, from its index bytes. -1: out of memory. */
ONEPASS_HIDDEN int onepass_hide(onepass_t *op, const uint8_t *index);
/* write_deferred_links' step for one name: writes `name` as a hardlink to `first` when
   it is still deferred. -1 when it failed (op->fail). GIL held. */
ONEPASS_HIDDEN int onepass_deferred(onepass_t *op, const uint8_t *name, uint32_t name_len,
				    Record *first, uint32_t mode, int64_t mtime);
/* Frees the path table (and the layer's entry ids): the records stay, for a verify
   that resolves them in its exact tree instead (flat.c), so the table's slots are gone
   before that tree is built (issue 21). Lookups find nothing and adding is refused
   afterwards, until onepass_remember_paths. */
ONEPASS_HIDDEN void onepass_forget_paths(onepass_t *op);
/* Builds the path table again from the records (the rare path: a verify that failed
   says why in the words of the table's checks). -1: out of memory (no exception). */
ONEPASS_HIDDEN int onepass_remember_paths(onepass_t *op);
/* The reason of op->fail as a str (GIL held); NULL with an exception for FAIL_OUTPUT. */
ONEPASS_HIDDEN PyObject *onepass_reason(const onepass_t *op);

#endif
