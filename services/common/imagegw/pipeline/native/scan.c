/* The compiled layer scanner (issue 21): a decompressed layer stream -> its compact index.
 *
 * Mirrors tarstream.TarReader (reads, headers, extension headers) byte for byte, and
 * members.admit only for plain members, whose result is certain; every other member, and
 * every error, is handed to the Python hooks of imagegw.pipeline.native_scan, so the
 * member rules and the messages stay in Python. The output is pipeline/compact.py's format.
 *
 * A plain member costs one header parse in C, straight from the read buffer and, in runs
 * of them, with the GIL released; member data is skipped in place, never copied out.
 *
 * With an Emitter (the one-pass flatten, onepass.h), each admitted entry is also written
 * to the image's tar when no newer layer hides it (streaming._NewestFirst), a file's data
 * straight from the read buffer: each layer is decompressed once.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <stdint.h>
#include <string.h>

#include "onepass.h"

#define BLOCK 512
#define MODE_SLOTS 1024

/* Compact index entry and marker codes (compact.ENTRY_KINDS, compact.MARKER_KINDS). */
enum { KIND_FILE = 0, KIND_DIR = 1, KIND_SYMLINK = 2, KIND_HARDLINK = 3 };

static const uint8_t MAGIC[8] = {'I', 'G', 'W', 'I', 'D', 'X', '2', 0};

/* A tar number as Python holds it: exact in `value`, or beyond int64 (`overflow` +1/-1,
 * `value` saturated). */
typedef struct {
    int64_t value;
    int overflow;
} number_t;

/* One 512-byte header, as tarstream._parse_header reads it. */
typedef struct {
    uint8_t name[256]; /* ustar prefix + "/" + name */
    size_t name_len;
    uint8_t link[100];
    size_t link_len;
    int type; /* the type flag after _parse_header's conversions (a code point) */
    number_t mode, uid, gid, size, mtime;
    uint8_t size_field[12]; /* for an exact message about a huge extension header */
} header_t;

/* One logical member: a header with its extension headers applied (RawMember). */
typedef struct {
    const uint8_t *name;
    size_t name_len;
    const uint8_t *link;
    size_t link_len;
    int type;
    number_t mode, uid, gid, mtime;
    number_t data_size; /* 0 for header-only types, as TarReader stores in .size */
} member_t;

/* A growable byte string (extension values, output sections). */
typedef struct {
    uint8_t *data;
    size_t len, cap;
    int present;
} text_t;

/* The PAX keys TarReader applies (_apply_extensions), in its order for the numbers. */
enum { PAX_PATH, PAX_LINKPATH, PAX_SIZE, PAX_UID, PAX_GID, PAX_MTIME, PAX_KEYS };
static const char *const PAX_NAMES[PAX_KEYS] = {"path", "linkpath", "size", "uid", "gid",
                                                 "mtime"};

typedef struct {
    text_t long_name, long_link;
    text_t pax[PAX_KEYS];
    int sparse;
} extensions_t;

typedef struct {
    int64_t mode;
    int32_t kind; /* -1: empty slot */
    uint32_t result;
} mode_slot_t;

typedef struct {
    PyObject *stream, *hooks, *readinto, *read;
    PyObject *borrow; /* stream.borrow, when it lends what it holds (inflate_ahead) */
    /* Limits, from the Python modules that own them (native_scan._Hooks.limits). */
    size_t chunk, max_extension, max_name, max_component;
    uint8_t whiteout[16];
    size_t whiteout_len;
    /* The read buffer: TarReader's _buf/_pos, and _offset (stream offset of buf[pos]). */
    uint8_t *buf;
    size_t cap, pos, len;
    uint64_t offset;
    uint64_t pending; /* data and padding of the last member, not yet skipped */
    uint64_t ordinal;
    /* The index being built. */
    text_t entries, markers;
    uint64_t entry_count, marker_count, dropped;
    mode_slot_t modes[MODE_SLOTS];
    size_t mode_count;
    extensions_t ext;
    onepass_t *op; /* the one-pass flatten's emitter, or NULL: index only */
} scanner_t;

static PyObject *SpeculationFailed; /* _scan.SpeculationFailed: the reason, for the wrapper */

/* -- output ----------------------------------------------------------------------- */

static int reserve(text_t *t, size_t more)
{
    if (t->len + more <= t->cap)
        return 0;
    size_t cap = t->cap ? t->cap : 4096;
    while (cap < t->len + more)
        cap *= 2;
    uint8_t *data = PyMem_RawRealloc(t->data, cap);
    if (!data)
        return -1;
    t->data = data;
    t->cap = cap;
    return 0;
}

static int set_text(text_t *t, const uint8_t *data, size_t len)
{
    t->len = 0;
    if (reserve(t, len + 1) < 0)
        return -1;
    if (len)
        memcpy(t->data, data, len);
    t->len = len;
    t->present = 1;
    return 0;
}

static void put_le(uint8_t *out, uint64_t value, int bytes)
{
    for (int i = 0; i < bytes; i++)
        out[i] = (uint8_t)(value >> (8 * i));
}

static uint8_t *put_varint(uint8_t *out, uint64_t value)
{
    while (value >= 0x80) {
        *out++ = (uint8_t)(value | 0x80);
        value >>= 7;
    }
    *out++ = (uint8_t)value;
    return out;
}

/* One entry in compact.encode's layout (onepass.h): u8 kind, u16 path length, u16 link
 * length, path, link, varints. Path and link are at most max_name bytes, which
 * read_limits holds to 65535 (and admit_in_python checks what Python admits). No GIL
 * needed. */
static int emit_entry(scanner_t *sc, int kind, uint32_t mode, int64_t mtime, uint64_t size,
                      uint64_t ordinal, int64_t offset, const uint8_t *path, size_t path_len,
                      const uint8_t *link, size_t link_len)
{
    text_t *t = &sc->entries;
    if (reserve(t, ENTRY_HEAD + path_len + link_len + 5 * VARINT_MAX) < 0)
        return -1;
    uint8_t *out = t->data + t->len, *at;
    out[0] = (uint8_t)kind;
    put_le(out + 1, path_len, 2);
    put_le(out + 3, link_len, 2);
    memcpy(out + ENTRY_HEAD, path, path_len);
    if (link_len)
        memcpy(out + ENTRY_HEAD + path_len, link, link_len);
    at = put_varint(out + ENTRY_HEAD + path_len + link_len, mode);
    at = put_varint(at, (uint64_t)mtime << 1 ^ (uint64_t)(mtime >> 63));
    at = put_varint(at, size);
    at = put_varint(at, ordinal);
    at = put_varint(at, (uint64_t)offset + 1);
    t->len += (size_t)(at - out);
    sc->entry_count++;
    return 0;
}

static int emit_marker(scanner_t *sc, int kind, const uint8_t *path, size_t path_len)
{
    text_t *t = &sc->markers;
    if (reserve(t, 5 + path_len) < 0)
        return -1;
    uint8_t *out = t->data + t->len;
    out[0] = (uint8_t)kind;
    put_le(out + 1, path_len, 4);
    memcpy(out + 5, path, path_len);
    t->len += 5 + path_len;
    sc->marker_count++;
    return 0;
}

/* -- numbers ---------------------------------------------------------------------- */

static int py_space(uint8_t c)
{
    return c == ' ' || (c >= '\t' && c <= '\r');
}

static number_t from_magnitude(uint64_t magnitude, int big, int negative)
{
    number_t n = {0, 0};
    if (negative) {
        if (big || magnitude > (uint64_t)INT64_MAX + 1) {
            n.value = INT64_MIN;
            n.overflow = -1;
        } else {
            n.value = (int64_t)(0 - magnitude);
        }
    } else if (big || magnitude > (uint64_t)INT64_MAX) {
        n.value = INT64_MAX;
        n.overflow = 1;
    } else {
        n.value = (int64_t)magnitude;
    }
    return n;
}

/* Python's int(text, base) of a bytes object, for bases 8 and 10 (CPython's
 * PyLong_FromString): surrounding whitespace, one sign, a "0o" prefix in base 8, single
 * underscores between digits; anything else, an embedded NUL included, is a ValueError
 * (-1). Base 10's digit limit (4300) is not applied: callers give longer texts to Python
 * or refuse them either way. */
static int python_int(const uint8_t *s, size_t n, int base, number_t *out)
{
#define AT(k) ((k) < n ? s[(k)] : 0)
    size_t i = 0;
    int negative = 0;
    while (i < n && py_space(s[i]))
        i++;
    if (AT(i) == '+') {
        i++;
    } else if (AT(i) == '-') {
        negative = 1;
        i++;
    }
    if (base == 8 && AT(i) == '0' && (AT(i + 1) == 'o' || AT(i + 1) == 'O')) {
        i += 2;
        if (AT(i) == '_')
            i++; /* one underscore may follow the prefix */
    }
    if (AT(i) == '_')
        return -1;
    size_t start = i;
    uint8_t prev = 0;
    uint64_t magnitude = 0;
    int big = 0;
    while (i < n && ((s[i] >= '0' && s[i] < '0' + base) || s[i] == '_')) {
        if (s[i] == '_') {
            if (prev == '_')
                return -1;
        } else {
            uint64_t digit = s[i] - '0';
            if (magnitude > (UINT64_MAX - digit) / (uint64_t)base)
                big = 1;
            else
                magnitude = magnitude * (uint64_t)base + digit;
        }
        prev = s[i];
        i++;
    }
    if (prev == '_' || i == start)
        return -1;
    while (i < n && py_space(s[i]))
        i++;
    if (i != n)
        return -1;
    *out = from_magnitude(magnitude, big, negative);
    return 0;
#undef AT
}

/* python_int(s, n, 8) of a text of octal digits only (every header's fields, as tar
 * writes them), without its general rules; 0 when the text is anything else. n <= 11. */
static int octal_digits(const uint8_t *s, size_t n, number_t *out)
{
    uint64_t value = 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '7')
            return 0;
        value = value << 3 | (uint64_t)(s[i] - '0');
    }
    out->value = (int64_t)value;
    out->overflow = 0;
    return 1;
}

/* tarstream._number: the usual zero-padded octal, GNU base-256 (0x80 unsigned, 0xFF
 * signed), or Python's int() of the text before a NUL without surrounding spaces.
 * -1 for a bad number. */
static int tar_number(const uint8_t *f, size_t n, number_t *out)
{
    if ((f[n - 1] == 0 || f[n - 1] == ' ') && f[0] >= '0' && f[0] <= '7') {
        if (octal_digits(f, n - 1, out) || python_int(f, n - 1, 8, out) == 0)
            return 0;
    }
    if (f[0] == 0x80) { /* int.from_bytes(field[1:], "big") */
        uint64_t bits = 0;
        int big = 0;
        for (size_t i = 1; i < n; i++) {
            if (bits >> 56)
                big = 1;
            bits = (bits << 8) | f[i];
        }
        *out = from_magnitude(bits, big, 0);
        return 0;
    }
    if (f[0] == 0xFF) { /* int.from_bytes(field, "big", signed=True): always negative */
        size_t first = n > 8 ? n - 8 : 0;
        uint64_t bits = 0;
        for (size_t i = first; i < n; i++)
            bits = (bits << 8) | f[i];
        if (n < 8)
            bits |= UINT64_MAX << (8 * n);
        /* Representable when the bytes before the last eight only extend the sign. */
        int fits = (bits >> 63) != 0;
        for (size_t i = 0; i < first; i++)
            fits = fits && f[i] == 0xFF;
        out->value = fits ? (int64_t)bits : INT64_MIN;
        out->overflow = fits ? 0 : -1;
        return 0;
    }
    const uint8_t *nul = memchr(f, 0, n);
    size_t end = nul ? (size_t)(nul - f) : n, start = 0;
    while (start < end && f[start] == ' ')
        start++;
    while (end > start && f[end - 1] == ' ')
        end--;
    if (start == end) {
        out->value = 0;
        out->overflow = 0;
        return 0;
    }
    return python_int(f + start, end - start, 8, out);
}

/* The Python int of a parsed number >= 0 (exact, from a base-256 field beyond int64). */
static PyObject *number_object(const number_t *n, const uint8_t *field, size_t len)
{
    if (n->overflow <= 0)
        return PyLong_FromLongLong(n->value);
    return PyObject_CallMethod((PyObject *)&PyLong_Type, "from_bytes", "y#s",
                               (const char *)field + 1, (Py_ssize_t)(len - 1), "big");
}

/* -- headers ---------------------------------------------------------------------- */

enum { HEADER_OK = 0, BAD_NUMBER = 1, BAD_CHECKSUM = 2 };

static int zero_block(const uint8_t *b)
{
    for (size_t i = 0; i < BLOCK; i++)
        if (b[i])
            return 0;
    return 1;
}

/* The checksum rule of tarstream._parse_header: the stored value is the sum of the block
 * with the checksum field as spaces, or that sum minus twice the sum of the bytes above
 * 127 (as tarstream computes the signed variant). */
static int checksum_matches(const uint8_t *b, const number_t *stored)
{
    uint32_t all = 0, field = 0, high = 0;
    for (size_t i = 0; i < BLOCK; i++) /* uint32 sums: the compiler vectorises them */
        all += b[i];
    for (size_t i = 148; i < 156; i++)
        field += b[i];
    int64_t unsigned_sum = (int64_t)all - field + 8 * 32;
    if (stored->overflow)
        return 0;
    if (stored->value == unsigned_sum)
        return 1;
    for (size_t i = 0; i < BLOCK; i++)
        high += b[i] > 127 ? b[i] : 0;
    return stored->value == unsigned_sum - 2 * (int64_t)high;
}

static size_t cstring_length(const uint8_t *s, size_t n)
{
    const uint8_t *nul = memchr(s, 0, n);
    return nul ? (size_t)(nul - s) : n;
}

/* tarstream._parse_header: checksum, name (with the ustar prefix), type conversions
 * (NUL type, old-style trailing-slash directories, contiguous files), link, numbers. */
static int parse_header(const uint8_t *b, header_t *h)
{
    number_t stored;
    if (tar_number(b + 148, 8, &stored) < 0)
        return BAD_NUMBER;
    if (!checksum_matches(b, &stored))
        return BAD_CHECKSUM;
    size_t name_len = cstring_length(b, 100);
    h->name_len = 0;
    if (memcmp(b + 257, "ustar\0", 6) == 0) {
        size_t prefix_len = cstring_length(b + 345, 155);
        if (prefix_len) {
            memcpy(h->name, b + 345, prefix_len);
            h->name[prefix_len] = '/';
            h->name_len = prefix_len + 1;
        }
    }
    memcpy(h->name + h->name_len, b, name_len);
    h->name_len += name_len;
    h->type = b[156] ? b[156] : '0';
    if (b[156] == 0 && h->name_len && h->name[h->name_len - 1] == '/')
        h->type = '5';
    if (h->type == '7')
        h->type = '0';
    h->link_len = cstring_length(b + 157, 100);
    memcpy(h->link, b + 157, h->link_len);
    memcpy(h->size_field, b + 124, 12);
    if (tar_number(b + 100, 8, &h->mode) < 0 || tar_number(b + 108, 8, &h->uid) < 0 ||
        tar_number(b + 116, 8, &h->gid) < 0 || tar_number(b + 124, 12, &h->size) < 0 ||
        tar_number(b + 136, 12, &h->mtime) < 0)
        return BAD_NUMBER;
    return HEADER_OK;
}

static int header_only(int type)
{
    return type >= '1' && type <= '6'; /* tarstream._HEADER_ONLY */
}

static int extension_type(int type)
{
    return type == 'x' || type == 'g' || type == 'L' || type == 'K';
}

/* TarReader._next_member's last steps for a member without extension headers. */
static void member_of_header(const header_t *h, member_t *m)
{
    m->name = h->name;
    m->name_len = h->name_len;
    m->link = h->link;
    m->link_len = h->link_len;
    m->type = h->type;
    m->mode = h->mode;
    m->uid = h->uid;
    m->gid = h->gid;
    m->mtime = h->mtime;
    m->data_size = h->size;
}

/* -- the member rules' fast path -------------------------------------------------- */

/* A name whose members.normalize_name is certain and refuses nothing (and so
 * name_problem passes): at most max_name bytes, no NUL or newline, an optional leading
 * "./" and trailing "/", then non-empty components that are not "." or ".." and at most
 * max_component bytes. Sets the normalised name and its base name; 0 when not plain. */
static int plain_name(const scanner_t *sc, const uint8_t *name, size_t len,
                      const uint8_t **path, size_t *path_len, const uint8_t **base)
{
    if (len > sc->max_name)
        return 0;
    if (len >= 2 && name[0] == '.' && name[1] == '/') {
        name += 2;
        len -= 2;
    }
    if (len && name[len - 1] == '/')
        len--;
    if (!len)
        return 0;
    size_t start = 0;
    for (size_t i = 0; i <= len; i++) {
        uint8_t c = i < len ? name[i] : '/';
        if (c == 0 || c == '\n')
            return 0;
        if (c != '/')
            continue;
        size_t part = i - start;
        if (part == 0 || part > sc->max_component)
            return 0;
        if (name[start] == '.' && (part == 1 || (part == 2 && name[start + 1] == '.')))
            return 0;
        *base = name + start;
        start = i + 1;
    }
    *path = name;
    *path_len = len;
    return 1;
}

typedef struct {
    int kind;
    const uint8_t *path, *link;
    size_t path_len, link_len;
} fast_t;

/* members.admit for a member it certainly admits with no question: a regular file,
 * directory, symlink or hardlink whose name is plain and whose base name is no
 * whiteout (classify_marker, aufs metadata), whose hardlink target is plain too
 * (normalize_hardlink_target) or whose symlink target check_symlink_target keeps.
 * 0 when Python must decide. */
static int fast_admit(const scanner_t *sc, const member_t *m, fast_t *out)
{
    const uint8_t *base, *ignored;
    switch (m->type) {
    case '0': out->kind = KIND_FILE; break;
    case '5': out->kind = KIND_DIR; break;
    case '2': out->kind = KIND_SYMLINK; break;
    case '1': out->kind = KIND_HARDLINK; break;
    default: return 0;
    }
    if (!plain_name(sc, m->name, m->name_len, &out->path, &out->path_len, &base))
        return 0;
    if ((size_t)(out->path + out->path_len - base) >= sc->whiteout_len &&
        memcmp(base, sc->whiteout, sc->whiteout_len) == 0)
        return 0;
    out->link = m->link;
    out->link_len = 0;
    if (out->kind == KIND_HARDLINK)
        return plain_name(sc, m->link, m->link_len, &out->link, &out->link_len, &ignored);
    if (out->kind == KIND_SYMLINK) {
        out->link_len = m->link_len;
        return m->link_len && m->link_len <= sc->max_name && !memchr(m->link, 0, m->link_len);
    }
    return 1;
}

/* Modes admit gives, per (raw mode, kind): asked of Python once (the hooks' `mode`). */
static size_t mode_hash(int64_t mode, int kind)
{
    uint64_t h = ((uint64_t)mode ^ ((uint64_t)kind << 60)) * 0x9E3779B97F4A7C15ull;
    return (size_t)(h >> 54) % MODE_SLOTS;
}

static int cached_mode(const scanner_t *sc, int64_t mode, int kind, uint32_t *result)
{
    for (size_t i = mode_hash(mode, kind);; i = (i + 1) % MODE_SLOTS) {
        const mode_slot_t *slot = &sc->modes[i];
        if (slot->kind < 0)
            return 0;
        if (slot->kind == kind && slot->mode == mode) {
            *result = slot->result;
            return 1;
        }
    }
}

static int python_mode(scanner_t *sc, int64_t mode, int kind, uint32_t *result)
{
    if (cached_mode(sc, mode, kind, result))
        return 0;
    PyObject *value = PyObject_CallMethod(sc->hooks, "mode", "Li", (long long)mode, kind);
    if (!value)
        return -1;
    unsigned long bits = PyLong_AsUnsignedLong(value);
    Py_DECREF(value);
    if (PyErr_Occurred())
        return -1;
    if (bits > UINT32_MAX) {
        PyErr_SetString(PyExc_OverflowError, "a mode beyond 32 bits");
        return -1;
    }
    *result = (uint32_t)bits;
    if (sc->mode_count < MODE_SLOTS / 2) { /* a hostile layer's many modes: ask each time */
        size_t i = mode_hash(mode, kind);
        while (sc->modes[i].kind >= 0)
            i = (i + 1) % MODE_SLOTS;
        sc->modes[i] = (mode_slot_t){mode, kind, *result};
        sc->mode_count++;
    }
    return 0;
}

/* -- reading (TarReader's plumbing; GIL held) ------------------------------------- */

/* The exception being raised, kept aside while a view is released. */
#if PY_VERSION_HEX >= 0x030C0000
typedef PyObject *saved_error_t;
static saved_error_t save_error(void) { return PyErr_GetRaisedException(); }
static void restore_error(saved_error_t error) { PyErr_SetRaisedException(error); }
static int has_error(saved_error_t error) { return error != NULL; }
#else
typedef struct {
    PyObject *type, *value, *traceback;
} saved_error_t;
static saved_error_t save_error(void)
{
    saved_error_t error;
    PyErr_Fetch(&error.type, &error.value, &error.traceback);
    return error;
}
static void restore_error(saved_error_t error)
{
    PyErr_Restore(error.type, error.value, error.traceback);
}
static int has_error(saved_error_t error) { return error.type != NULL; }
#endif

/* stream.readinto() of `size` bytes at buf[at] (or read(), for streams without it). */
static Py_ssize_t read_into(scanner_t *sc, size_t at, size_t size)
{
    PyObject *result;
    Py_ssize_t got;
    if (sc->readinto) {
        PyObject *view = PyMemoryView_FromMemory((char *)sc->buf + at, (Py_ssize_t)size,
                                                 PyBUF_WRITE);
        if (!view)
            return -1;
        result = PyObject_CallOneArg(sc->readinto, view);
        /* The buffer is ours: no stream may keep a view of it (an error stays set). */
        saved_error_t error = save_error();
        PyObject *released = PyObject_CallMethod(view, "release", NULL);
        Py_DECREF(view);
        if (has_error(error)) {
            Py_XDECREF(released);
            PyErr_Clear();
            restore_error(error);
            Py_XDECREF(result);
            return -1;
        }
        if (!released) {
            Py_XDECREF(result);
            return -1;
        }
        Py_DECREF(released);
        got = result == Py_None ? 0 : PyLong_AsSsize_t(result);
    } else {
        result = PyObject_CallFunction(sc->read, "n", (Py_ssize_t)size);
        if (!result)
            return -1;
        Py_buffer data;
        if (PyObject_GetBuffer(result, &data, PyBUF_SIMPLE) < 0) {
            Py_DECREF(result);
            return -1;
        }
        got = data.len;
        if ((size_t)got <= size)
            memcpy(sc->buf + at, data.buf, (size_t)got);
        PyBuffer_Release(&data);
    }
    Py_DECREF(result);
    if (got == -1 && PyErr_Occurred())
        return -1;
    if (got < 0 || (size_t)got > size) {
        PyErr_Format(PyExc_OSError, "the layer stream returned %zd bytes for %zu", got, size);
        return -1;
    }
    return got;
}

static int refuse(scanner_t *sc, const char *hook, const char *format, ...)
{
    va_list args;
    va_start(args, format);
    PyObject *call_args = Py_VaBuildValue(format, args);
    va_end(args);
    if (!call_args)
        return -1;
    PyObject *method = PyObject_GetAttrString(sc->hooks, hook);
    if (method) {
        PyObject *result = PyObject_CallObject(method, call_args);
        Py_DECREF(method);
        Py_XDECREF(result);
        if (result) /* the hooks always raise */
            PyErr_Format(PyExc_RuntimeError, "native_scan hook %s did not raise", hook);
    }
    Py_DECREF(call_args);
    return -1;
}

/* TarReader._take: exactly `count` bytes at *out; 0 at a clean end of the stream. */
static int take(scanner_t *sc, size_t count, const uint8_t **out)
{
    size_t have = sc->len - sc->pos;
    if (count <= have) {
        *out = sc->buf + sc->pos;
        sc->pos += count;
        sc->offset += count;
        return 1;
    }
    memmove(sc->buf, sc->buf + sc->pos, have);
    sc->pos = 0;
    sc->len = have;
    while (have < count) {
        size_t want = count - have > sc->chunk ? count - have : sc->chunk;
        Py_ssize_t got = read_into(sc, have, want);
        if (got < 0)
            return -1;
        if (got == 0) {
            if (have == 0)
                return 0;
            return refuse(sc, "truncated_header", "()");
        }
        have += (size_t)got;
        sc->len = have;
    }
    *out = sc->buf;
    sc->pos = count;
    sc->offset += count;
    return 1;
}

/* TarReader._skip: member data and padding, read in chunks and dropped. */
static int skip(scanner_t *sc, uint64_t count)
{
    if (!count)
        return 0;
    sc->offset += count;
    size_t avail = sc->len - sc->pos;
    if (count <= avail) {
        sc->pos += (size_t)count;
        return 0;
    }
    count -= avail;
    sc->pos = sc->len = 0;
    while (count) {
        Py_ssize_t got = read_into(sc, 0, sc->chunk);
        if (got < 0)
            return -1;
        if (got == 0)
            return refuse(sc, "truncated_member", "()");
        if ((uint64_t)got > count) {
            sc->len = (size_t)got;
            sc->pos = (size_t)count;
            return 0;
        }
        count -= (uint64_t)got;
    }
    return 0;
}

/* TarReader._take_extension: the data of an extension header (at most max_extension
 * bytes); a negative size is refused. */
static int take_extension(scanner_t *sc, const header_t *h, const char *what,
                          uint64_t header_offset, const uint8_t **out, size_t *len)
{
    const number_t *size = &h->size;
    if (size->overflow > 0 || size->value > (int64_t)sc->max_extension) {
        PyObject *exact = number_object(size, h->size_field, 12);
        if (!exact)
            return -1;
        refuse(sc, "extension_too_large", "(Ns)", exact, what);
        return -1;
    }
    if (size->overflow < 0 || size->value < 0)
        return refuse(sc, "negative_extension", "(sK)", what, (unsigned long long)header_offset);
    size_t wanted = size->value > 0 ? (size_t)size->value : 0;
    size_t padded = (wanted + BLOCK - 1) / BLOCK * BLOCK;
    int got = take(sc, padded, out);
    if (got < 0)
        return -1;
    if (got == 0)
        return refuse(sc, "extension_missing", "(s)", what);
    *len = wanted;
    return 0;
}

/* tarstream._parse_pax, keeping the records _apply_extensions reads (later records
 * replace earlier ones, as dict.update does) and whether a GNU.sparse. key is there. */
static int parse_pax(scanner_t *sc, const uint8_t *data, size_t len)
{
    size_t pos = 0;
    while (pos < len) {
        if (data[pos] == 0)
            break; /* NUL padding after the records */
        const uint8_t *space_at = memchr(data + pos, ' ', len - pos);
        /* int(data[pos:space]); data[pos:-1] when there is no space */
        size_t digits_end = space_at ? (size_t)(space_at - data) : len - 1;
        number_t length = {0, 0};
        if (digits_end < pos || python_int(data + pos, digits_end - pos, 10, &length) < 0)
            length.value = 0;
        if (!space_at || length.value <= 0 || length.overflow ||
            (uint64_t)length.value > len - pos || data[pos + length.value - 1] != '\n')
            return refuse(sc, "malformed_pax", "()");
        size_t end = pos + (size_t)length.value;
        size_t record = (size_t)(space_at - data) + 1; /* data[space + 1 : end - 1] */
        size_t record_end = end - 1 > record ? end - 1 : record;
        const uint8_t *equals = memchr(data + record, '=', record_end - record);
        if (!equals)
            return refuse(sc, "malformed_pax_record", "()");
        size_t key_len = (size_t)(equals - (data + record));
        const uint8_t *value = equals + 1;
        size_t value_len = (size_t)(data + record_end - value);
        for (int k = 0; k < PAX_KEYS; k++) {
            if (key_len == strlen(PAX_NAMES[k]) &&
                memcmp(data + record, PAX_NAMES[k], key_len) == 0 &&
                set_text(&sc->ext.pax[k], value, value_len) < 0) {
                PyErr_NoMemory();
                return -1;
            }
        }
        if (key_len >= 11 && memcmp(data + record, "GNU.sparse.", 11) == 0)
            sc->ext.sparse = 1;
        pos = end;
    }
    return 0;
}

/* int(pax[key].split(".", 1)[0]) of _apply_extensions; 1 when Python refuses it. */
static int pax_number(scanner_t *sc, const text_t *value, number_t *out)
{
    const uint8_t *dot = memchr(value->data, '.', value->len);
    size_t len = dot ? (size_t)(dot - value->data) : value->len;
    int ascii = 1;
    for (size_t i = 0; i < len; i++)
        ascii = ascii && value->data[i] < 0x80;
    if (ascii && len <= 18) /* int(str) of ASCII is int(bytes); 18 digits fit int64 */
        return python_int(value->data, len, 10, out) < 0 ? 1 : 0;
    PyObject *number = PyObject_CallMethod(sc->hooks, "pax_number", "y#",
                                           (const char *)value->data, (Py_ssize_t)len);
    if (!number) {
        if (!PyErr_ExceptionMatches(PyExc_ValueError))
            return -1;
        PyErr_Clear();
        return 1;
    }
    int overflow;
    long long exact = PyLong_AsLongLongAndOverflow(number, &overflow);
    Py_DECREF(number);
    if (exact == -1 && PyErr_Occurred())
        return -1;
    out->overflow = overflow;
    out->value = overflow > 0 ? INT64_MAX : overflow < 0 ? INT64_MIN : exact;
    return 0;
}

/* tarstream._apply_extensions: GNU long name and link, then PAX path, linkpath and the
 * numbers, then the sparse type. */
static int apply_extensions(scanner_t *sc, const header_t *h, member_t *m)
{
    extensions_t *ext = &sc->ext;
    member_of_header(h, m);
    if (ext->long_name.present) {
        m->name = ext->long_name.data;
        m->name_len = ext->long_name.len;
        if (m->type == '0' && m->name_len && m->name[m->name_len - 1] == '/')
            m->type = '5';
    }
    if (ext->long_link.present) {
        m->link = ext->long_link.data;
        m->link_len = ext->long_link.len;
    }
    if (ext->pax[PAX_PATH].present) {
        m->name = ext->pax[PAX_PATH].data;
        m->name_len = ext->pax[PAX_PATH].len;
    }
    if (ext->pax[PAX_LINKPATH].present) {
        m->link = ext->pax[PAX_LINKPATH].data;
        m->link_len = ext->pax[PAX_LINKPATH].len;
    }
    number_t *targets[] = {&m->data_size, &m->uid, &m->gid, &m->mtime};
    for (int k = PAX_SIZE; k <= PAX_MTIME; k++) {
        if (!ext->pax[k].present)
            continue;
        int bad = pax_number(sc, &ext->pax[k], targets[k - PAX_SIZE]);
        if (bad < 0)
            return -1;
        if (bad)
            return refuse(sc, "bad_pax_number", "(y#sy#)", (const char *)m->name,
                          (Py_ssize_t)m->name_len, PAX_NAMES[k],
                          (const char *)ext->pax[k].data, (Py_ssize_t)ext->pax[k].len);
    }
    if (ext->sparse)
        m->type = 'S';
    return 0;
}

/* -- one member -------------------------------------------------------------------- */

/* The data TarReader skips after the member; 0 for header-only types. */
static void finish_member(member_t *m)
{
    if (header_only(m->type)) {
        m->data_size.value = 0;
        m->data_size.overflow = 0;
    }
}

static uint64_t padded_size(const number_t *size)
{
    uint64_t value = (uint64_t)size->value; /* >= 0 here; saturated when beyond */
    return value + (BLOCK - value % BLOCK) % BLOCK;
}

/* members.admit's mtime: min(max(mtime, 0), MAX_MTIME). */
#define MAX_MTIME ((int64_t)8589934591LL) /* members.MAX_MTIME, 8**11 - 1 */
static int64_t clamped_mtime(const number_t *mtime)
{
    if (mtime->overflow > 0 || mtime->value > MAX_MTIME)
        return MAX_MTIME;
    if (mtime->overflow < 0 || mtime->value < 0)
        return 0;
    return mtime->value;
}

/* The mtime handed to members.admit: beyond int64 either way, one admit clamps alike. */
static int64_t python_mtime(const number_t *mtime)
{
    if (mtime->overflow)
        return mtime->overflow > 0 ? MAX_MTIME + 1 : -1;
    return mtime->value;
}

/* An admitted plain member (fast_admit), with its mode from the cache or Python. */
static int emit_fast(scanner_t *sc, const member_t *m, const fast_t *f, uint32_t mode,
                     uint64_t ordinal, uint64_t offset)
{
    int64_t mtime = clamped_mtime(&m->mtime);
    uint64_t size = f->kind == KIND_FILE ? (uint64_t)m->data_size.value : 0;
    return emit_entry(sc, f->kind, mode, mtime, size, ordinal, (int64_t)offset, f->path,
                      f->path_len, f->link, f->link_len);
}

/* members.admit in Python (native_scan._Hooks.admit) for every other member. */
static int admit_in_python(scanner_t *sc, const member_t *m, uint64_t ordinal, uint64_t offset)
{
    PyObject *result = PyObject_CallMethod(
        sc->hooks, "admit", "y#iLLLLLy#KK", (const char *)m->name, (Py_ssize_t)m->name_len,
        m->type, (long long)m->mode.value, (long long)m->uid.value, (long long)m->gid.value,
        (long long)python_mtime(&m->mtime), (long long)m->data_size.value, (const char *)m->link,
        (Py_ssize_t)m->link_len, (unsigned long long)ordinal, (unsigned long long)offset);
    if (!result)
        return -1;
    int status = 0, code;
    unsigned int mode;
    long long mtime;
    unsigned long long size;
    const char *path, *link;
    Py_ssize_t path_len, link_len;
    if (result == Py_None) {
        sc->dropped++;
    } else if (!PyTuple_Check(result)) {
        PyErr_SetString(PyExc_TypeError, "native_scan admit hook must return a tuple or None");
        status = -1;
    } else if (PyTuple_GET_SIZE(result) == 3) {
        if (!PyArg_ParseTuple(result, "iiy#", &status, &code, &path, &path_len))
            status = -1;
        else if (emit_marker(sc, code, (const uint8_t *)path, (size_t)path_len) < 0)
            status = -2;
    } else {
        if (!PyArg_ParseTuple(result, "iiILKy#y#", &status, &code, &mode, &mtime, &size,
                              &path, &path_len, &link, &link_len))
            status = -1;
        else if (path_len > UINT16_MAX || link_len > UINT16_MAX) {
            PyErr_SetString(PyExc_ValueError, "an admitted name passes the 65535 bytes a "
                            "compact index holds");
            status = -1;
        } else if (emit_entry(sc, code, mode, mtime, size, ordinal, (int64_t)offset,
                            (const uint8_t *)path, (size_t)path_len, (const uint8_t *)link,
                            (size_t)link_len) < 0)
            status = -2;
    }
    Py_DECREF(result);
    if (status == -2)
        PyErr_NoMemory();
    return status < 0 ? -1 : 0;
}

static void reset_extensions(extensions_t *ext)
{
    ext->long_name.present = ext->long_link.present = 0;
    for (int k = 0; k < PAX_KEYS; k++)
        ext->pax[k].present = 0;
    ext->sparse = 0;
}

/* -- the one-pass emitter (onepass.h) ---------------------------------------------- */

/* The emitter's part for the entry just indexed at `entry` of the entries: written when
   visible; a file's data (`size` bytes, buffered at pos) copied after its header. No GIL
   needed (the data is in the buffer). -1: op->fail says why. */
static int emit_buffered(scanner_t *sc, size_t entry, int type, uint64_t size)
{
    onepass_t *op = sc->op;
    int data;
    op->base[op->current] = sc->entries.data;
    if (onepass_entry(op, entry, type, &data) < 0)
        return -1;
    if (!data)
        return 0;
    if (out_put(&op->out, sc->buf + sc->pos, (size_t)size) < 0 ||
        out_zeros(&op->out, (BLOCK - size % BLOCK) % BLOCK) < 0) {
        op->fail = FAIL_OUTPUT;
        return -1;
    }
    sc->pos += (size_t)size;
    sc->offset += size;
    sc->pending -= size;
    return 0;
}

/* Raises what stopped the emitter: _scan.SpeculationFailed(reason), or the output's
   error (GIL held). */
static int emitter_failed(scanner_t *sc)
{
    PyObject *reason = onepass_reason(sc->op);
    if (reason != NULL) {
        PyErr_SetObject(SpeculationFailed, reason);
        Py_DECREF(reason);
    }
    return -1;
}

/* A file's data, at most `left` bytes, lent by stream.borrow(size) and written out from
   where it lies (no copy into the read buffer, nor into the output's); the read buffer
   is empty. The bytes written, 0 at the end of the stream, -1 with an exception set. */
static Py_ssize_t emit_borrowed(scanner_t *sc, uint64_t left)
{
    Py_ssize_t want = left > (uint64_t)PY_SSIZE_T_MAX ? PY_SSIZE_T_MAX : (Py_ssize_t)left;
    PyObject *lent = PyObject_CallFunction(sc->borrow, "n", want);
    if (!lent)
        return -1;
    Py_buffer data;
    if (PyObject_GetBuffer(lent, &data, PyBUF_SIMPLE) < 0) {
        Py_DECREF(lent);
        return -1;
    }
    Py_ssize_t got = data.len;
    int bad = got > want;
    if (bad)
        PyErr_Format(PyExc_OSError, "the layer stream lent %zd bytes for %zd", got, want);
    else if (got > 0 && out_put(&sc->op->out, data.buf, (size_t)got) < 0)
        bad = 1;
    PyBuffer_Release(&data);
    Py_DECREF(lent);
    return bad ? -1 : got;
}

/* The emitter's part for a member general_step indexed (GIL held): a file's data may
   need reads (TarReader.copy_data). */
static int emit_general(scanner_t *sc, size_t entry, int type, uint64_t size)
{
    onepass_t *op = sc->op;
    int data;
    op->base[op->current] = sc->entries.data;
    if (onepass_entry(op, entry, type, &data) < 0)
        return emitter_failed(sc);
    for (uint64_t left = data ? size : 0; left > 0;) {
        if (sc->pos == sc->len && sc->borrow && left >= OUT_DIRECT) {
            Py_ssize_t got = emit_borrowed(sc, left);
            if (got < 0)
                return -1;
            if (got == 0)
                return refuse(sc, "truncated_member", "()");
            sc->offset += (uint64_t)got;
            sc->pending -= (uint64_t)got;
            left -= (uint64_t)got;
            continue;
        }
        if (sc->pos == sc->len) {
            Py_ssize_t got = read_into(sc, 0, sc->chunk);
            if (got < 0)
                return -1;
            if (got == 0)
                return refuse(sc, "truncated_member", "()");
            sc->pos = 0;
            sc->len = (size_t)got;
        }
        size_t have = sc->len - sc->pos;
        size_t n = left < have ? (size_t)left : have;
        if (out_put(&op->out, sc->buf + sc->pos, n) < 0)
            return -1;
        sc->pos += n;
        sc->offset += n;
        sc->pending -= n;
        left -= n;
    }
    if (data && out_zeros(&op->out, (BLOCK - size % BLOCK) % BLOCK) < 0)
        return -1;
    return 0;
}

/* One logical member the general way (GIL held): TarReader.__iter__'s skip, then
 * _next_member with every extension header, then index_layer's admit. 1 for a member,
 * 0 at the end of the archive, -1 with an exception set. */
static int general_step(scanner_t *sc)
{
    if (skip(sc, sc->pending) < 0)
        return -1;
    sc->pending = 0;
    reset_extensions(&sc->ext);
    header_t h;
    for (;;) {
        uint64_t header_offset = sc->offset;
        const uint8_t *block, *data = NULL;
        size_t len = 0;
        int got = take(sc, BLOCK, &block);
        if (got <= 0)
            return got;
        if (zero_block(block))
            return 0;
        int problem = parse_header(block, &h);
        if (problem == BAD_NUMBER)
            return refuse(sc, "bad_number", "(K)", (unsigned long long)header_offset);
        if (problem == BAD_CHECKSUM)
            return refuse(sc, "bad_checksum", "(K)", (unsigned long long)header_offset);
        if (!extension_type(h.type))
            break;
        const char *what = h.type == 'x' ? "PAX" : h.type == 'g' ? "PAX global"
                           : h.type == 'L' ? "GNU long name" : "GNU long link";
        if (take_extension(sc, &h, what, header_offset, &data, &len) < 0)
            return -1;
        int stored = 0;
        if (h.type == 'x')
            stored = parse_pax(sc, data, len);
        else if (h.type == 'L') /* global headers ('g') are ignored, as containerd does */
            stored = set_text(&sc->ext.long_name, data, cstring_length(data, len));
        else if (h.type == 'K')
            stored = set_text(&sc->ext.long_link, data, cstring_length(data, len));
        if (stored < 0) {
            if (!PyErr_Occurred())
                PyErr_NoMemory();
            return -1;
        }
    }
    member_t m;
    if (apply_extensions(sc, &h, &m) < 0)
        return -1;
    finish_member(&m);
    if (m.data_size.value < 0)
        return refuse(sc, "negative_size", "(y#)", (const char *)m.name, (Py_ssize_t)m.name_len);
    sc->pending = padded_size(&m.data_size);
    uint64_t ordinal = sc->ordinal++, entries = sc->entry_count;
    size_t entry = sc->entries.len;
    fast_t f;
    uint32_t mode;
    if (!fast_admit(sc, &m, &f)) {
        if (admit_in_python(sc, &m, ordinal, sc->offset) < 0)
            return -1;
    } else {
        if (python_mode(sc, m.mode.value, f.kind, &mode) < 0)
            return -1;
        if (emit_fast(sc, &m, &f, mode, ordinal, sc->offset) < 0) {
            PyErr_NoMemory();
            return -1;
        }
    }
    if (sc->op && sc->entry_count != entries &&
        emit_general(sc, entry, m.type, (uint64_t)m.data_size.value) < 0)
        return -1;
    return 1;
}

/* The emitter will look up the path of the member whose header is `block`: its table
   slot is fetched while the header is parsed. A plain ustar name only (no prefix field),
   normalised as plain_name does; any other name is a wrong guess, which costs nothing. */
static void prefetch_path(const scanner_t *sc, const uint8_t *block)
{
    if (block[345] != 0)
        return;
    const uint8_t *name = block;
    size_t len = cstring_length(block, 100);
    if (len >= 2 && name[0] == '.' && name[1] == '/') {
        name += 2;
        len -= 2;
    }
    if (len && name[len - 1] == '/')
        len--;
    onepass_prefetch(sc->op, name, (uint32_t)len);
}

/* Members the scan does with the GIL held before it releases it for the rest of a buffer:
 * a layer of slow members (PAX headers, whiteouts) never trades the GIL per member. */
#define FAST_PROBE 32
#define FAST_NO_MEMORY (-1)
#define FAST_EMIT_FAILED (-2)

/* The members general_step would handle without a read, an extension header, Python or
 * a question: plain ustar members whose header is in the buffer and whose mode is cached.
 * Needs no GIL; stops (consuming nothing of that member) at anything else, or after
 * `limit` members. The number of members done, or FAST_NO_MEMORY. */
static long fast_run(scanner_t *sc, long limit)
{
    long done = 0;
    for (; done < limit; done++) {
        size_t avail = sc->len - sc->pos;
        if (sc->pending > avail || avail - sc->pending < BLOCK)
            break;
        const uint8_t *block = sc->buf + sc->pos + sc->pending;
        header_t h;
        member_t m;
        fast_t f;
        uint32_t mode;
        if (sc->op)
            prefetch_path(sc, block);
        if (zero_block(block) || parse_header(block, &h) != HEADER_OK || extension_type(h.type))
            break;
        member_of_header(&h, &m);
        finish_member(&m);
        if (m.data_size.value < 0 || m.data_size.overflow || m.mtime.overflow ||
            !fast_admit(sc, &m, &f) || !cached_mode(sc, m.mode.value, f.kind, &mode))
            break;
        /* a file the emitter may write: its data must be buffered too */
        if (sc->op && f.kind == KIND_FILE &&
            (uint64_t)m.data_size.value > avail - sc->pending - BLOCK)
            break;
        sc->pos += (size_t)sc->pending + BLOCK;
        sc->offset += sc->pending + BLOCK;
        sc->pending = padded_size(&m.data_size);
        size_t entry = sc->entries.len;
        if (emit_fast(sc, &m, &f, mode, sc->ordinal++, sc->offset) < 0)
            return FAST_NO_MEMORY;
        if (sc->op && emit_buffered(sc, entry, m.type, (uint64_t)m.data_size.value) < 0)
            return FAST_EMIT_FAILED;
    }
    return done;
}

/* fast_run over what is buffered, with the GIL released once the run is long. */
static int fast_members(scanner_t *sc)
{
    long done = fast_run(sc, FAST_PROBE);
    if (done == FAST_PROBE) {
        Py_BEGIN_ALLOW_THREADS
        if (sc->op)
            sc->op->out.nogil = 1;
        done = fast_run(sc, LONG_MAX);
        if (sc->op)
            sc->op->out.nogil = 0;
        Py_END_ALLOW_THREADS
    }
    if (done == FAST_NO_MEMORY) {
        PyErr_NoMemory();
        return -1;
    }
    if (done == FAST_EMIT_FAILED)
        return emitter_failed(sc);
    return 0;
}

/* -- the index ---------------------------------------------------------------------- */

/* compact.encode's bytes: header, layer name, entries, markers. */
static PyObject *index_bytes(scanner_t *sc, const char *layer, Py_ssize_t layer_len)
{
    if (sc->entry_count > UINT32_MAX || sc->marker_count > UINT32_MAX ||
        (size_t)layer_len > UINT32_MAX) {
        PyObject *structs = PyImport_ImportModule("struct");
        if (structs) {
            PyObject *error = PyObject_GetAttrString(structs, "error");
            if (error) {
                PyErr_SetString(error, "argument out of range");
                Py_DECREF(error);
            }
            Py_DECREF(structs);
        }
        return NULL;
    }
    size_t total = 28 + (size_t)layer_len + sc->entries.len + sc->markers.len;
    PyObject *out = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)total);
    if (!out)
        return NULL;
    uint8_t *p = (uint8_t *)PyBytes_AS_STRING(out);
    memcpy(p, MAGIC, 8);
    put_le(p + 8, sc->entry_count, 4);
    put_le(p + 12, sc->marker_count, 4);
    put_le(p + 16, sc->dropped, 8);
    put_le(p + 24, (uint64_t)layer_len, 4);
    p += 28;
    memcpy(p, layer, (size_t)layer_len);
    p += layer_len;
    if (sc->entries.len)
        memcpy(p, sc->entries.data, sc->entries.len);
    p += sc->entries.len;
    if (sc->markers.len)
        memcpy(p, sc->markers.data, sc->markers.len);
    return out;
}

static int read_limits(scanner_t *sc)
{
    PyObject *limits = PyObject_GetAttrString(sc->hooks, "limits");
    if (!limits)
        return -1;
    unsigned long long chunk, max_extension, max_name, max_component;
    const char *whiteout;
    Py_ssize_t whiteout_len;
    int ok = PyArg_ParseTuple(limits, "KKKKy#", &chunk, &max_extension, &max_name,
                              &max_component, &whiteout, &whiteout_len);
    Py_DECREF(limits);
    if (!ok)
        return -1;
    if (chunk < BLOCK || chunk > (1ull << 30) || max_extension > (1ull << 30) ||
        max_name > UINT16_MAX || /* an entry's path and link lengths are 16-bit */
        whiteout_len < 1 || whiteout_len > (Py_ssize_t)sizeof(sc->whiteout)) {
        PyErr_SetString(PyExc_ValueError, "native_scan limits out of range");
        return -1;
    }
    sc->chunk = (size_t)chunk;
    sc->max_extension = (size_t)max_extension;
    sc->max_name = (size_t)max_name;
    sc->max_component = (size_t)max_component;
    memcpy(sc->whiteout, whiteout, (size_t)whiteout_len);
    sc->whiteout_len = (size_t)whiteout_len;
    /* Leftover of a short take (< its count) plus one read of max(chunk, count - have). */
    sc->cap = sc->chunk + (sc->max_extension + BLOCK) / BLOCK * BLOCK + BLOCK;
    return 0;
}

static void scanner_free(scanner_t *sc)
{
    PyMem_RawFree(sc->buf);
    PyMem_RawFree(sc->entries.data);
    PyMem_RawFree(sc->markers.data);
    PyMem_RawFree(sc->ext.long_name.data);
    PyMem_RawFree(sc->ext.long_link.data);
    for (int k = 0; k < PAX_KEYS; k++)
        PyMem_RawFree(sc->ext.pax[k].data);
    Py_XDECREF(sc->readinto);
    Py_XDECREF(sc->borrow);
    Py_XDECREF(sc->read);
    PyMem_RawFree(sc);
}

/* -- the Emitter: the one-pass flatten's state (onepass.h) as a Python object -------- */

typedef struct {
    PyObject_HEAD
    onepass_t *op;
    PyObject *indexes; /* list: the index bytes of the layers read (the paths' arena) */
    int broken;        /* a scan failed midway: its records point at freed memory */
    uint32_t read;     /* layers read to their end */
} Emitter;

static PyTypeObject EmitterType;

static int emitter_init(Emitter *self, PyObject *args, PyObject *kwargs)
{
    static char *names[] = {"out_fd", "max_data_bytes", "layers", NULL};
    int fd;
    unsigned long long max_data_bytes;
    unsigned int layers;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "iKI", names, &fd, &max_data_bytes,
                                     &layers))
        return -1;
    if (self->op != NULL) {
        PyErr_SetString(PyExc_RuntimeError, "an Emitter is initialised once");
        return -1;
    }
    self->indexes = PyList_New(0);
    self->op = onepass_new(fd, max_data_bytes, layers);
    if (self->indexes == NULL || self->op == NULL) {
        if (!PyErr_Occurred())
            PyErr_NoMemory();
        return -1;
    }
    return 0;
}

static void emitter_dealloc(Emitter *self)
{
    onepass_free(self->op);
    Py_XDECREF(self->indexes);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int emitter_usable(Emitter *self)
{
    if (self->op == NULL || self->broken) {
        PyErr_SetString(PyExc_RuntimeError, "the emitter is not initialised, or failed");
        return 0;
    }
    return 1;
}

/* TarWriter.close: two zero blocks, and everything buffered goes out. */
static PyObject *emitter_close(Emitter *self, PyObject *unused)
{
    (void)unused;
    if (!emitter_usable(self))
        return NULL;
    if (out_zeros(&self->op->out, 2 * BLOCK) < 0 || out_flush(&self->op->out) < 0)
        return NULL;
    Py_RETURN_NONE;
}

static void release_state(PyObject *capsule)
{
    Py_XDECREF((PyObject *)PyCapsule_GetContext(capsule));
}

/* The state for _flat's Tree.write_deferred and Tree.verify (it keeps the emitter). */
static PyObject *emitter_state(Emitter *self, void *unused)
{
    (void)unused;
    if (!emitter_usable(self))
        return NULL;
    if (self->read != self->op->layers) {
        PyErr_SetString(PyExc_RuntimeError, "the emitter has not read every layer");
        return NULL;
    }
    PyObject *capsule = PyCapsule_New(self->op, ONEPASS_CAPSULE, release_state);
    if (capsule == NULL)
        return NULL;
    Py_INCREF(self);
    if (PyCapsule_SetContext(capsule, self) < 0) {
        Py_DECREF(self);
        Py_DECREF(capsule);
        return NULL;
    }
    return capsule;
}

static PyObject *emitter_data_bytes(Emitter *self, void *unused)
{
    (void)unused;
    return PyLong_FromUnsignedLongLong(self->op ? self->op->data_bytes : 0);
}

/* The path table, freed before the exact tree is built (onepass_forget_paths). */
static PyObject *emitter_forget_paths(Emitter *self, PyObject *unused)
{
    (void)unused;
    if (!emitter_usable(self))
        return NULL;
    onepass_forget_paths(self->op);
    Py_RETURN_NONE;
}

static PyMethodDef emitter_methods[] = {
    {"close", (PyCFunction)emitter_close, METH_NOARGS,
     "ends the tar (two zero blocks) and writes out what is buffered"},
    {"forget_paths", (PyCFunction)emitter_forget_paths, METH_NOARGS,
     "frees the path table: the records stay for Tree.verify, nothing more is written"},
    {NULL, NULL, 0, NULL},
};

static PyObject *emitter_deferred(Emitter *self, void *unused)
{
    (void)unused;
    return PyLong_FromUnsignedLong(self->op ? self->op->deferred : 0);
}

static PyGetSetDef emitter_getset[] = {
    {"state", (getter)emitter_state, NULL, "a capsule of the state, for _flat", NULL},
    {"data_bytes", (getter)emitter_data_bytes, NULL, "bytes of file data written", NULL},
    {"deferred", (getter)emitter_deferred, NULL, "hardlinks left for the end", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject EmitterType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "imagegw.pipeline.native._scan.Emitter",
    .tp_basicsize = sizeof(Emitter),
    .tp_dealloc = (destructor)emitter_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Emitter(out_fd, max_data_bytes, layers): the one-pass flatten's writer "
              "(use imagegw.pipeline.native_onepass).",
    .tp_methods = emitter_methods,
    .tp_getset = emitter_getset,
    .tp_init = (initproc)emitter_init,
    .tp_new = PyType_GenericNew,
};

/* The layer's index is made: its records now point into its bytes, and it hides its
   paths from the older layers (not after the oldest: nothing is read after it). */
static int emitter_layer_done(Emitter *self, PyObject *index)
{
    onepass_t *op = self->op;
    if ((uint64_t)PyBytes_GET_SIZE(index) > UINT32_MAX) { /* references are 32-bit */
        PyErr_SetString(SpeculationFailed, "a layer's index passes 4 GiB");
        return -1;
    }
    if (PyList_Append(self->indexes, index) < 0)
        return -1;
    const uint8_t *bytes = (const uint8_t *)PyBytes_AS_STRING(index);
    op->base[op->current] = bytes + 28 + (size_t)(bytes[24] | bytes[25] << 8 |
                                                  bytes[26] << 16 | (uint32_t)bytes[27] << 24);
    if (op->current > 0 && onepass_hide(op, bytes) < 0) {
        PyErr_NoMemory();
        return -1;
    }
    self->read++;
    return 0;
}

static PyObject *scan(PyObject *module, PyObject *args)
{
    (void)module;
    PyObject *stream, *hooks, *result = NULL, *emitter = Py_None;
    const char *layer;
    Py_ssize_t layer_len;
    unsigned int number = 0;
    if (!PyArg_ParseTuple(args, "Oy#O|OI:scan", &stream, &layer, &layer_len, &hooks, &emitter,
                          &number))
        return NULL;
    Emitter *em = NULL;
    if (emitter != Py_None) {
        if (!PyObject_TypeCheck(emitter, &EmitterType)) {
            PyErr_SetString(PyExc_TypeError, "scan's emitter must be an Emitter");
            return NULL;
        }
        em = (Emitter *)emitter;
        if (!emitter_usable(em))
            return NULL;
        if (em->op->paths_forgotten) {
            PyErr_SetString(PyExc_RuntimeError, "the emitter's path table was freed "
                            "(forget_paths): it writes no more layers");
            return NULL;
        }
        if (number >= em->op->layers || em->op->base[number] != NULL) {
            PyErr_SetString(PyExc_ValueError, "a layer number out of range, or read twice");
            return NULL;
        }
        onepass_begin_layer(em->op, number);
    }
    scanner_t *sc = PyMem_RawCalloc(1, sizeof(scanner_t));
    if (!sc)
        return PyErr_NoMemory();
    sc->stream = stream;
    sc->hooks = hooks;
    sc->op = em ? em->op : NULL;
    for (size_t i = 0; i < MODE_SLOTS; i++)
        sc->modes[i].kind = -1;
    if (read_limits(sc) < 0)
        goto done;
    sc->buf = PyMem_RawMalloc(sc->cap);
    if (!sc->buf) {
        PyErr_NoMemory();
        goto done;
    }
    if (sc->op && PyObject_HasAttrString(stream, "borrow"))
        sc->borrow = PyObject_GetAttrString(stream, "borrow");
    if (PyObject_HasAttrString(stream, "readinto"))
        sc->readinto = PyObject_GetAttrString(stream, "readinto");
    else
        sc->read = PyObject_GetAttrString(stream, "read");
    if (!sc->readinto && !sc->read)
        goto done;
    for (;;) {
        if (fast_members(sc) < 0)
            goto done;
        int step = general_step(sc);
        if (step < 0)
            goto done;
        if (step == 0)
            break;
    }
    result = index_bytes(sc, layer, layer_len);
    if (result && em && emitter_layer_done(em, result) < 0)
        Py_CLEAR(result);
done:
    if (em && !result)
        em->broken = 1;
    scanner_free(sc);
    return result;
}

static PyMethodDef methods[] = {
    {"scan", scan, METH_VARARGS,
     "scan(stream, layer: bytes, hooks, emitter=None, number=0) -> bytes: the compact "
     "index of a decompressed layer (use imagegw.pipeline.native_scan.scan_layer); with an "
     "Emitter, layer `number`'s visible entries are written too (native_onepass)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT, "_scan", "The compiled layer scanner (see native_scan.py).", -1,
    methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__scan(void)
{
    if (PyType_Ready(&EmitterType) < 0)
        return NULL;
    PyObject *module = PyModule_Create(&module_def);
    if (module == NULL)
        return NULL;
    SpeculationFailed = PyErr_NewException("imagegw.pipeline.native._scan.SpeculationFailed",
                                           NULL, NULL);
    Py_INCREF(&EmitterType);
    if (SpeculationFailed == NULL ||
        PyModule_AddObject(module, "Emitter", (PyObject *)&EmitterType) < 0) {
        Py_DECREF(&EmitterType);
        Py_DECREF(module);
        return NULL;
    }
    Py_INCREF(SpeculationFailed);
    if (PyModule_AddObject(module, "SpeculationFailed", SpeculationFailed) < 0) {
        Py_DECREF(SpeculationFailed);
        Py_DECREF(module);
        return NULL;
    }
    return module;
}
