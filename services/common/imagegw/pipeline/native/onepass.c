/* The one-pass flatten's state (onepass.h): what the newer layers hide, what was written
 * under which name, and the checks of streaming._NewestFirst, over compact indexes. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <string.h>
#include <sys/mman.h>

#include "onepass.h"

#define IMPLICIT_MODE 0755

static uint64_t le(const uint8_t *p, int bytes)
{
	uint64_t value = 0;
	for (int i = bytes - 1; i >= 0; i--)
		value = value << 8 | p[i];
	return value;
}

static uint32_t hash_bytes(const uint8_t *p, uint32_t n)
{
	uint64_t h = 0x9E3779B97F4A7C15ULL ^ n;
	while (n >= 8) {
		uint64_t w;
		memcpy(&w, p, 8);
		h = (h ^ w) * 0xBF58476D1CE4E5B9ULL;
		h ^= h >> 31;
		p += 8;
		n -= 8;
	}
	uint64_t w = 0;
	memcpy(&w, p, n);
	h = (h ^ w) * 0x94D049BB133111EBULL;
	h ^= h >> 29;
	return (uint32_t)(h ^ h >> 32);
}

const uint8_t *onepass_bytes(const onepass_t *op, Ref ref)
{
	return op->base[ref.layer] + ref.off;
}

Ref record_path(const Record *r)
{
	return (Ref){r->layer, r->path, r->path_len};
}

const uint8_t *record_entry(const onepass_t *op, const Record *r)
{
	return op->base[r->layer] + r->path - ENTRY_HEAD;
}

/* -- the path table: open addressing over record ids ----------------------------- */

/* The slot holding `path`, or the empty slot where it would go. */
static Slot *slot_of(const onepass_t *op, const Table *t, const uint8_t *path, uint32_t len,
		     uint32_t hash)
{
	for (uint32_t i = hash & t->mask;; i = (i + 1) & t->mask) {
		Slot *s = &t->slots[i];
		if (s->id == 0)
			return s;
		if (s->hash != hash)
			continue;
		const Record *r = &op->records[s->id - 1];
		if (r->path_len == len && memcmp(op->base[r->layer] + r->path, path, len) == 0)
			return s;
	}
}

/* Asks for huge pages under a large table (its lookups land anywhere in it: with 4 KiB
   pages, most of them also miss the TLB). A hint: nothing changes where it is refused. */
static void huge_pages(void *memory, size_t bytes)
{
#ifdef MADV_HUGEPAGE
	const uintptr_t huge = (uintptr_t)2 << 20;
	uintptr_t start = ((uintptr_t)memory + huge - 1) & ~(huge - 1);
	uintptr_t end = ((uintptr_t)memory + bytes) & ~(huge - 1);
	if (end > start)
		madvise((void *)start, end - start, MADV_HUGEPAGE);
#else
	(void)memory;
	(void)bytes;
#endif
}

static int table_grow(Table *t)
{
	uint32_t size = t->slots ? (t->mask + 1) * 2 : 1024;
	Slot *slots = PyMem_RawCalloc(size, sizeof(Slot));
	if (slots == NULL)
		return -1;
	huge_pages(slots, (size_t)size * sizeof(Slot));
	for (uint32_t i = 0; t->slots && i <= t->mask; i++) {
		Slot s = t->slots[i];
		if (s.id == 0)
			continue;
		uint32_t k = s.hash & (size - 1);
		while (slots[k].id != 0)
			k = (k + 1) & (size - 1);
		slots[k] = s;
	}
	PyMem_RawFree(t->slots);
	t->slots = slots;
	t->mask = size - 1;
	return 0;
}

/* Room for one more id (at most 70 % full). */
static int table_room(Table *t)
{
	if (t->slots != NULL && (uint64_t)(t->count + 1) * 10 <= (uint64_t)(t->mask + 1) * 7)
		return 0;
	return table_grow(t);
}

void onepass_prefetch(const onepass_t *op, const uint8_t *path, uint32_t len)
{
	if (op->paths.slots != NULL)
		__builtin_prefetch(&op->paths.slots[hash_bytes(path, len) & op->paths.mask]);
}

/* The record of a path whose hash_bytes is `hash`; NULL when it has none. */
static Record *find_hashed(const onepass_t *op, const uint8_t *path, uint32_t len,
			   uint32_t hash)
{
	if (op->paths.slots == NULL)
		return NULL;
	Slot *s = slot_of(op, &op->paths, path, len, hash);
	return s->id ? &op->records[s->id - 1] : NULL;
}

Record *onepass_find(const onepass_t *op, const uint8_t *path, uint32_t len)
{
	return find_hashed(op, path, len, hash_bytes(path, len));
}

/* record_at for a path whose hash_bytes is `hash`. */
static uint32_t record_at_hashed(onepass_t *op, Ref ref, uint32_t hash)
{
	const uint8_t *path = onepass_bytes(op, ref);
	if (table_room(&op->paths) < 0)
		return 0;
	Slot *s = slot_of(op, &op->paths, path, ref.len, hash);
	if (s->id != 0)
		return s->id;
	if (op->record_count == op->record_cap) {
		uint32_t cap = op->record_cap ? op->record_cap * 2 : 4096;
		Record *records = PyMem_RawRealloc(op->records, (size_t)cap * sizeof(Record));
		if (records == NULL)
			return 0;
		op->records = records;
		op->record_cap = cap;
	}
	op->records[op->record_count++] = (Record){ref.layer, ref.off, (uint16_t)ref.len, R_NONE, 0, 0};
	*s = (Slot){hash, op->record_count};
	op->paths.count++;
	return op->record_count;
}

/* The id (1 + number) of the record of the path at `ref`, made (kind R_NONE, no flags)
   when missing; 0 when out of memory. */
static uint32_t record_at(onepass_t *op, Ref ref)
{
	return record_at_hashed(op, ref, hash_bytes(onepass_bytes(op, ref), ref.len));
}

static uint32_t record_id(const onepass_t *op, const Record *r)
{
	return r != NULL ? (uint32_t)(r - op->records) + 1 : 0;
}

/* -- settled directories: ancestors checked once per layer ------------------------- */

/* A directory P is settled in the layer being scanned once an entry below it passed
   visible's ancestor checks in this layer and claim marked P and its ancestors
   (implicit_dirs, or written as directories). For the rest of the layer the checks hold
   for every entry below P: hidden_below changes only between layers (onepass_hide), and
   none of P's ancestors can be written as a non-directory any more (visible refuses an
   implicit dir as "a directory and something else", a written one as "twice", and one
   written by a newer layer is hidden). So visible and claim skip P's ancestors. */

static Settled *settled_slot(onepass_t *op, uint32_t hash)
{
	return &op->settled[hash & (SETTLED_SLOTS - 1)];
}

static int settled(onepass_t *op, const uint8_t *dir, uint32_t len, uint32_t hash)
{
	const Settled *s = settled_slot(op, hash);
	if (s->layer != op->current + 1)
		return 0;
	const Record *r = &op->records[s->id - 1];
	return r->path_len == len && memcmp(op->base[r->layer] + r->path, dir, len) == 0;
}

static void settle(onepass_t *op, uint32_t id, uint32_t hash)
{
	*settled_slot(op, hash) = (Settled){id, op->current + 1};
}

/* Makes the record of `ref` stand for the entry whose path it is. */
static void record_entry_set(Record *r, Ref ref, int kind, uint32_t target)
{
	r->layer = ref.layer;
	r->path = ref.off;
	r->path_len = (uint16_t)ref.len;
	r->kind = (uint8_t)kind;
	r->target = target;
}

static int has_flag(const Record *r, int flag)
{
	return r != NULL && (r->flags & flag) != 0;
}

/* -- failures ---------------------------------------------------------------------- */

static char *copy_of(const uint8_t *data, uint32_t len)
{
	char *copy = PyMem_RawMalloc(len + 1);
	if (copy != NULL)
		memcpy(copy, data, len);
	return copy;
}

static int fail(onepass_t *op, int why, const uint8_t *path, uint32_t len, const uint8_t *other,
		uint32_t other_len)
{
	op->fail = why;
	if (path != NULL) {
		op->fail_path = copy_of(path, len);
		op->fail_path_len = len;
	}
	if (other != NULL) {
		op->fail_other = copy_of(other, other_len);
		op->fail_other_len = other_len;
	}
	if ((path && !op->fail_path) || (other && !op->fail_other)) {
		op->fail = FAIL_OUTPUT;
		op->out.error = ENOMEM;
	}
	return -1;
}

static int out_of_memory(onepass_t *op)
{
	if (!op->out.error)
		op->out.error = ENOMEM;
	op->fail = FAIL_OUTPUT;
	return -1;
}

static PyObject *decoded(const char *data, uint32_t len)
{
	return PyUnicode_DecodeUTF8(data, len, "surrogateescape");
}

PyObject *onepass_reason(const onepass_t *op)
{
	PyObject *path = NULL, *other = NULL, *reason = NULL;
	if (op->fail == FAIL_OUTPUT) {
		out_raise(&op->out);
		return NULL;
	}
	if (op->fail_path && (path = decoded(op->fail_path, op->fail_path_len)) == NULL)
		return NULL;
	if (op->fail_other && (other = decoded(op->fail_other, op->fail_other_len)) == NULL) {
		Py_XDECREF(path);
		return NULL;
	}
	switch (op->fail) {
	case FAIL_BELOW_NON_DIR:
		reason = PyUnicode_FromFormat("%R lies below the non-directory %R", path, other);
		break;
	case FAIL_TWICE:
		reason = PyUnicode_FromFormat("%R appears twice in one layer", path);
		break;
	case FAIL_DIR_AND_OTHER:
		reason = PyUnicode_FromFormat("%R is a directory and something else", path);
		break;
	case FAIL_TOO_LARGE:
		reason = PyUnicode_FromString("a layer's index passes 4 GiB");
		break;
	default:
		reason = PyUnicode_FromString("the data written passes the unpacked-size limit");
	}
	Py_XDECREF(path);
	Py_XDECREF(other);
	return reason;
}

/* -- _NewestFirst ------------------------------------------------------------------- */

static int emitted_kind(const Record *r)
{
	return r != NULL && r->kind >= R_FILE && r->kind <= R_HARDLINK;
}

/* path.rpartition("/")[0]'s length (0 without a "/") */
static uint32_t parent_length(const uint8_t *path, uint32_t len)
{
	while (len > 0 && path[len - 1] != '/')
		len--;
	return len > 0 ? len - 1 : 0;
}

/* What visible learnt of an entry's parent directory, for claim. */
typedef struct {
	int hashed;      /* `hash` is hash_bytes of the parent's path */
	uint32_t hash;
	int settled;     /* settled in this layer: claim need not mark its ancestors */
} Parent;

/* _NewestFirst.visible for the path at `ref` whose record is `r` (NULL: none): 1 visible,
   0 hidden by a newer layer (`newer`), -1 a clash. With `newer`, `p` gets what claim
   needs of the parent. */
static int visible(onepass_t *op, Ref ref, int kind, int newer, const Record *r, Parent *p)
{
	const uint8_t *path = onepass_bytes(op, ref);
	uint32_t len = ref.len;
	if (newer && has_flag(r, F_HIDDEN))
		return 0;
	uint32_t parent = parent_length(path, len);
	int same = newer && op->has_clear && op->clear.len == parent &&
		   memcmp(onepass_bytes(op, op->clear), path, parent) == 0;
	if (!same && newer && parent > 0) {
		p->hashed = 1;
		p->hash = hash_bytes(path, parent);
		p->settled = same = settled(op, path, parent, p->hash);
		if (same) {
			op->has_clear = 1;
			op->clear = (Ref){ref.layer, ref.off, parent};
		}
	}
	if (!same) {
		for (uint32_t slash = 0; slash < len; slash++) {
			if (path[slash] != '/')
				continue;
			const Record *ancestor = onepass_find(op, path, slash);
			if (newer && has_flag(ancestor, F_HIDDEN_BELOW))
				return 0;
			if (emitted_kind(ancestor) && ancestor->kind != R_DIR)
				return fail(op, FAIL_BELOW_NON_DIR, path, len, path, slash);
		}
		if (newer && op->root_hidden_below)
			return 0;
		/* siblings are checked at once (most entries follow one of their siblings) */
		op->has_clear = parent > 0 && newer;
		op->clear = (Ref){ref.layer, ref.off, parent};
	}
	if (r != NULL && (emitted_kind(r) || r->kind == R_DEFERRED))
		return fail(op, FAIL_TWICE, path, len, NULL, 0);
	if (kind != EK_DIR && has_flag(r, F_IMPLICIT))
		return fail(op, FAIL_DIR_AND_OTHER, path, len, NULL, 0);
	return 1;
}

/* _NewestFirst.claim: the entry whose path is `ref` (hash_bytes: `hash`) goes out as
   `rkind`; the record's id, or 0 when out of memory. `p`: what visible (newer) learnt
   of the parent, NULL after the last layer. */
static uint32_t claim(onepass_t *op, Ref ref, uint32_t hash, int rkind, uint32_t target,
		      const Parent *p)
{
	uint32_t id = record_at_hashed(op, ref, hash);
	if (id == 0)
		return 0;
	record_entry_set(&op->records[id - 1], ref, rkind, target);
	const uint8_t *path = onepass_bytes(op, ref);
	uint32_t parent = parent_length(path, ref.len);
	if (rkind != R_DIR && op->has_clear) {
		const uint8_t *clear = onepass_bytes(op, op->clear);
		if ((op->clear.len == ref.len || (op->clear.len > ref.len && clear[ref.len] == '/')) &&
		    memcmp(clear, path, ref.len) == 0)
			op->has_clear = 0; /* a non-directory now lies on that parent's path */
	}
	if (p != NULL && p->settled)
		return id; /* its ancestors are marked already */
	if (op->has_claimed && op->claimed.len == parent &&
	    memcmp(onepass_bytes(op, op->claimed), path, parent) == 0)
		return id; /* its ancestors are known already */
	op->has_claimed = 1;
	op->claimed = (Ref){ref.layer, ref.off, parent};
	uint32_t at = 0;
	for (uint32_t slash = 0; slash < ref.len; slash++) {
		if (path[slash] != '/')
			continue;
		at = record_at(op, (Ref){ref.layer, ref.off, slash});
		if (at == 0)
			return 0;
		Record *ancestor = &op->records[at - 1];
		if (!emitted_kind(ancestor))
			ancestor->flags |= F_IMPLICIT;
	}
	if (p != NULL && parent > 0) /* `at`: the parent's record */
		settle(op, at, p->hashed ? p->hash : hash_bytes(path, parent));
	return id;
}

typedef struct {
	uint8_t kind;
	uint32_t mode;
	int64_t mtime;
	uint64_t size;
	Ref path, link;
	uint32_t next; /* where the next entry starts */
} EntryView;

static EntryView view_entry(const onepass_t *op, uint32_t layer, uint32_t entry)
{
	const uint8_t *e = op->base[layer] + entry;
	EntryFields f;
	EntryView v;
	v.next = entry + (uint32_t)(entry_fields(e, &f) - e);
	v.kind = e[0];
	v.mode = f.mode;
	v.mtime = f.mtime;
	v.size = f.size;
	v.path = (Ref){layer, entry + ENTRY_HEAD, entry_path_len(e)};
	v.link = (Ref){layer, v.path.off + v.path.len, entry_link_len(e)};
	return v;
}

static Str str_of(const onepass_t *op, Ref ref)
{
	return (Str){(const char *)onepass_bytes(op, ref), ref.len};
}

/* A header could not be written (out.error says why). */
static int output_failed(onepass_t *op)
{
	op->fail = FAIL_OUTPUT;
	return -1;
}

/* The record of the layer's next entry (0: none), for onepass_hide. */
static int note_entry(onepass_t *op, uint32_t id)
{
	if (op->entry_id_count == op->entry_id_cap) {
		uint32_t cap = op->entry_id_cap ? op->entry_id_cap * 2 : 4096;
		uint32_t *ids = PyMem_RawRealloc(op->entry_ids, (size_t)cap * sizeof(*ids));
		if (ids == NULL)
			return -1;
		op->entry_ids = ids;
		op->entry_id_cap = cap;
	}
	op->entry_ids[op->entry_id_count++] = id;
	return 0;
}

/* _NewestFirst.read_layer's body for the entry `v` whose record is `r` (NULL: none):
   0, or -1 when it failed (op->fail). *id: the entry's record afterwards (0: none). */
static int read_entry(onepass_t *op, EntryView v, uint32_t hash, Record *r, int member_type,
		      int *data, uint32_t *id)
{
	Parent parent = {0, 0, 0};
	*id = record_id(op, r);
	int shown = visible(op, v.path, v.kind, 1, r, &parent);
	if (shown <= 0)
		return shown;
	Str path = str_of(op, v.path), none = {"", 0};
	switch (v.kind) {
	case EK_FILE:
		if (member_type != '0')
			return 0; /* left for the verify to notice */
		op->data_bytes += v.size;
		if (op->data_bytes > op->max_data_bytes) /* the exact merge gives the verdict */
			return fail(op, FAIL_LIMIT, NULL, 0, NULL, 0);
		if (put_header(&op->out, path, '0', v.mode, v.mtime, v.size, none) < 0)
			return output_failed(op);
		*id = claim(op, v.path, hash, R_FILE, 0, &parent);
		op->files++;
		*data = 1;
		break;
	case EK_DIR:
		if (put_header(&op->out, path, '5', v.mode, v.mtime, 0, none) < 0)
			return output_failed(op);
		*id = claim(op, v.path, hash, R_DIR, 0, &parent);
		break;
	case EK_SYMLINK:
		if (put_header(&op->out, path, '2', 0777, v.mtime, 0, str_of(op, v.link)) < 0)
			return output_failed(op);
		*id = claim(op, v.path, hash, R_SYMLINK, 0, &parent);
		break;
	default: {
		/* a hardlink to a file written before it in this layer, else left for the end */
		const Record *target = onepass_find(op, onepass_bytes(op, v.link), v.link.len);
		if (target == NULL || target->kind != R_FILE || target->layer != op->current) {
			*id = record_at_hashed(op, v.path, hash);
			if (*id != 0)
				record_entry_set(&op->records[*id - 1], v.path, R_DEFERRED, 0);
			op->deferred++;
			break;
		}
		uint32_t target_id = record_id(op, target);
		EntryView file = view_entry(op, target->layer, target->path - ENTRY_HEAD);
		if (put_header(&op->out, path, '1', file.mode, file.mtime, 0, str_of(op, v.link)) < 0)
			return output_failed(op);
		*id = claim(op, v.path, hash, R_HARDLINK, target_id, &parent);
		op->links++;
	}
	}
	return *id == 0 ? out_of_memory(op) : 0;
}

/* One admitted entry of the layer being scanned (onepass.h). */
int onepass_entry(onepass_t *op, size_t entry, int member_type, int *data)
{
	*data = 0;
	if (entry > UINT32_MAX - 2 * (size_t)UINT16_MAX - ENTRY_HEAD - 5 * VARINT_MAX)
		return fail(op, FAIL_TOO_LARGE, NULL, 0, NULL, 0);
	EntryView v = view_entry(op, op->current, (uint32_t)entry);
	const uint8_t *path = onepass_bytes(op, v.path);
	uint32_t hash = hash_bytes(path, v.path.len), id;
	Record *r = find_hashed(op, path, v.path.len, hash);
	if (read_entry(op, v, hash, r, member_type, data, &id) < 0)
		return -1;
	return note_entry(op, id) < 0 ? out_of_memory(op) : 0;
}

/* write_deferred_links' step for one name of a link group whose file went out. */
int onepass_deferred(onepass_t *op, const uint8_t *name, uint32_t name_len, Record *first,
		     uint32_t mode, int64_t mtime)
{
	Record *r = onepass_find(op, name, name_len);
	if (r == NULL || r->kind != R_DEFERRED)
		return 0;
	uint32_t first_id = (uint32_t)(first - op->records) + 1;
	Ref first_path = record_path(first);
	r->kind = R_NONE; /* deferred_links.discard(name) */
	Ref ref = record_path(r);
	if (visible(op, ref, EK_HARDLINK, 0, r, NULL) < 0)
		return -1;
	if (put_header(&op->out, str_of(op, ref), '1', mode, mtime, 0, str_of(op, first_path)) < 0)
		return output_failed(op);
	if (claim(op, ref, hash_bytes(name, name_len), R_HARDLINK, first_id, NULL) == 0)
		return out_of_memory(op);
	op->links++;
	return 0;
}

/* hidden.add / hidden_below.add: the flag on the path's record. */
static int hide(onepass_t *op, Ref ref, int flags)
{
	if (ref.len == 0 && (flags & F_HIDDEN_BELOW))
		op->root_hidden_below = 1;
	uint32_t id = record_at(op, ref);
	if (id == 0)
		return -1;
	op->records[id - 1].flags |= (uint8_t)flags;
	return 0;
}

/* _NewestFirst._hide: every entry of the layer just read hides its path from the older
   layers (a non-directory its subtree too); whiteouts a path, opaque markers a subtree. */
int onepass_hide(onepass_t *op, const uint8_t *index)
{
	uint32_t entries = (uint32_t)le(index + 8, 4), markers = (uint32_t)le(index + 12, 4);
	const uint8_t *section = index + 28 + le(index + 24, 4);
	uint32_t layer = op->current, at = 0;
	op->base[layer] = section;
	op->has_clear = 0;
	/* each entry's record, noted as it was read (a record the entry did not find or make
	   is looked up: an entry below a path a newer layer hides) */
	const uint32_t *ids = op->entry_id_count == entries ? op->entry_ids : NULL;
	for (uint32_t i = 0; i < entries; i++) {
		EntryView v = view_entry(op, layer, at);
		int flags = v.kind == EK_DIR ? F_HIDDEN : F_HIDDEN | F_HIDDEN_BELOW;
		if (ids != NULL && ids[i] != 0)
			op->records[ids[i] - 1].flags |= (uint8_t)flags;
		else if (hide(op, v.path, flags) < 0)
			return -1;
		at = v.next;
	}
	for (uint32_t i = 0; i < markers; i++) {
		const uint8_t *m = section + at;
		Ref path = {layer, at + 5, (uint32_t)le(m + 1, 4)};
		if (hide(op, path, m[0] == MK_WHITEOUT ? F_HIDDEN | F_HIDDEN_BELOW
			 : F_HIDDEN_BELOW) < 0)
			return -1;
		at = path.off + path.len;
	}
	return 0;
}

void onepass_begin_layer(onepass_t *op, uint32_t layer)
{
	op->current = layer;
	op->entry_id_count = 0;
}

onepass_t *onepass_new(int fd, uint64_t max_data_bytes, uint32_t layers)
{
	onepass_t *op = PyMem_RawCalloc(1, sizeof(onepass_t));
	if (op == NULL)
		return NULL;
	op->out.fd = fd;
	op->out.buf = PyMem_RawMalloc(OUT_BUFFER);
	op->base = PyMem_RawCalloc(layers + 1, sizeof(*op->base));
	op->max_data_bytes = max_data_bytes;
	op->layers = layers;
	if (op->out.buf == NULL || op->base == NULL) {
		onepass_free(op);
		return NULL;
	}
	return op;
}

void onepass_forget_paths(onepass_t *op)
{
	PyMem_RawFree(op->paths.slots);
	op->paths = (Table){NULL, 0, 0};
	PyMem_RawFree(op->entry_ids);
	op->entry_ids = NULL;
	op->entry_id_count = op->entry_id_cap = 0;
	op->paths_forgotten = 1;
}

int onepass_remember_paths(onepass_t *op)
{
	if (!op->paths_forgotten)
		return 0;
	for (uint32_t id = 1; id <= op->record_count; id++) {
		const Record *r = &op->records[id - 1];
		const uint8_t *path = onepass_bytes(op, record_path(r));
		uint32_t hash = hash_bytes(path, r->path_len);
		if (table_room(&op->paths) < 0)
			return -1;
		*slot_of(op, &op->paths, path, r->path_len, hash) = (Slot){hash, id};
		op->paths.count++;
	}
	op->paths_forgotten = 0;
	return 0;
}

void onepass_free(onepass_t *op)
{
	if (op == NULL)
		return;
	PyMem_RawFree(op->out.buf);
	PyMem_RawFree(op->base);
	PyMem_RawFree(op->records);
	PyMem_RawFree(op->paths.slots);
	PyMem_RawFree(op->entry_ids);
	PyMem_RawFree(op->fail_path);
	PyMem_RawFree(op->fail_other);
	PyMem_RawFree(op);
}
