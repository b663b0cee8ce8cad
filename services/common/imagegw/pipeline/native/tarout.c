/* The canonical tar output (tarout.h): tarstream.TarWriter's bytes, written to an fd. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/uio.h>
#include <unistd.h>

#include "tarout.h"

void out_raise(const Out *o)
{
	if (o->error == ENOMEM) {
		PyErr_NoMemory();
	} else {
		errno = o->error;
		PyErr_SetFromErrno(PyExc_OSError);
	}
}

static int failed(Out *o, int error)
{
	if (!o->error)
		o->error = error;
	if (!o->nogil)
		out_raise(o);
	return -1;
}

/* What is buffered, then `count` bytes at `data` (none: a flush), in one writev without
 * the GIL: a file's data goes to the fd from where it lies instead of through the buffer. */
static int out_write_through(Out *o, const char *data, size_t count)
{
	struct iovec parts[2];
	int left = 0;
	if (o->len)
		parts[left++] = (struct iovec){o->buf, o->len};
	if (count)
		parts[left++] = (struct iovec){(void *)data, count};
	if (left == 0)
		return 0;
	struct iovec *part = parts;
	int error = 0;
	PyThreadState *saved = o->nogil ? NULL : PyEval_SaveThread();
	while (left > 0) {
		ssize_t n = writev(o->fd, part, left);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			error = errno;
			break;
		}
		while (left > 0 && (size_t)n >= part->iov_len) {
			n -= (ssize_t)part->iov_len;
			part++;
			left--;
		}
		if (left > 0) {
			part->iov_base = (char *)part->iov_base + n;
			part->iov_len -= (size_t)n;
		}
	}
	if (saved != NULL)
		PyEval_RestoreThread(saved);
	o->len = 0;
	return error ? failed(o, error) : 0;
}

/* Writes everything buffered to the fd (without the GIL). */
int out_flush(Out *o)
{
	return out_write_through(o, NULL, 0);
}

int out_put(Out *o, const void *data, size_t count)
{
	const char *p = data;
	if (count >= OUT_DIRECT)
		return out_write_through(o, p, count);
	while (count > 0) {
		if (o->len == OUT_BUFFER && out_flush(o) < 0)
			return -1;
		size_t room = OUT_BUFFER - o->len;
		size_t n = count < room ? count : room;
		memcpy(o->buf + o->len, p, n);
		o->len += n;
		p += n;
		count -= n;
	}
	return 0;
}

int out_zeros(Out *o, size_t count)
{
	static const char zeros[TAR_BLOCK * 2];
	while (count > 0) {
		size_t n = count < sizeof(zeros) ? count : sizeof(zeros);
		if (out_put(o, zeros, n) < 0)
			return -1;
		count -= n;
	}
	return 0;
}

static void octal(unsigned char *field, int digits, uint64_t value)
{
	for (int i = digits - 1; i >= 0; i--) {
		field[i] = (unsigned char)('0' + (value & 7));
		value >>= 3;
	}
}

static int is_ascii(Str s)
{
	for (uint32_t i = 0; i < s.len; i++)
		if ((unsigned char)s.ptr[i] >= 0x80)
			return 0;
	return 1;
}

static unsigned byte_sum(const unsigned char *p, size_t n)
{
	unsigned sum = 0;
	for (size_t i = 0; i < n; i++)
		sum += p[i];
	return sum;
}

/* tarstream._ustar_block (over _template: root:root, ustar magic) */
static void ustar_block(unsigned char *block, Str prefix, Str base, char kind, uint32_t mode,
			int64_t mtime, uint64_t size, Str link)
{
	memset(block, 0, TAR_BLOCK);
	memcpy(block, base.ptr, base.len);
	octal(block + 100, 7, mode & 07777);
	memcpy(block + 108, "0000000\0" "0000000", 16);
	octal(block + 124, 11, size);
	octal(block + 136, 11, (uint64_t)mtime);
	memset(block + 148, ' ', 8);
	block[156] = (unsigned char)kind;
	memcpy(block + 157, link.ptr, link.len);
	memcpy(block + 257, "ustar\0" "00" "root", 12);
	memcpy(block + 297, "root", 4);
	memcpy(block + 329, "0000000\0" "0000000", 16);
	memcpy(block + 345, prefix.ptr, prefix.len);
	/* the checksum: the block's byte sum, over the bytes set above (the rest is zero) */
	unsigned sum = byte_sum(block, base.len) + byte_sum(block + 100, 57) +
		       byte_sum(block + 157, link.len) + byte_sum(block + 257, 12) +
		       byte_sum(block + 297, 4) + byte_sum(block + 329, 16) +
		       byte_sum(block + 345, prefix.len);
	octal(block + 148, 6, sum);
	block[154] = 0;
	block[155] = ' ';
}

static int decimal_digits(uint64_t n)
{
	int digits = 1;
	while (n >= 10) {
		n /= 10;
		digits++;
	}
	return digits;
}

/* tarstream._pax_record: "<length> key=value\n", length counting itself */
static size_t pax_record(char *at, const char *key, Str value)
{
	size_t body = 1 + strlen(key) + 1 + value.len + 1;
	size_t length = body + 1;
	while ((size_t)decimal_digits(length) + body != length)
		length = (size_t)decimal_digits(length) + body;
	if (at != NULL) {
		int n = sprintf(at, "%zu %s=", length, key);
		memcpy(at + n, value.ptr, value.len);
		at[n + value.len] = '\n';
	}
	return length;
}

/* _split_ustar_name: prefix and name fields, or 0 when the name needs a PAX path. */
static int split_ustar_name(Str name, Str *prefix, Str *base)
{
	if (name.len <= 100) {
		*prefix = (Str){"", 0};
		*base = name;
		return 1;
	}
	int64_t cut = (name.len < 156 ? name.len : 156) - 1;
	while (cut >= 0 && name.ptr[cut] != '/')
		cut--;
	if (cut > 0 && cut < (int64_t)name.len - 1 && name.len - cut - 1 <= 100) {
		*prefix = (Str){name.ptr, (uint32_t)cut};
		*base = (Str){name.ptr + cut + 1, name.len - (uint32_t)cut - 1};
		return 1;
	}
	return 0;
}

/* tarstream._header: one member's header(s) */
int put_header(Out *o, Str name, char kind, uint32_t mode, int64_t mtime, uint64_t size,
	       Str link)
{
	Str prefix, base;
	int pax_path = !split_ustar_name(name, &prefix, &base) || !is_ascii(name);
	if (pax_path) {
		prefix = (Str){"", 0};
		base = (Str){name.ptr, name.len < 100 ? name.len : 100};
	}
	int pax_link = link.len > 100 || !is_ascii(link);
	int pax_size = size > (uint64_t)USTAR_MAX_NUMBER;
	char size_text[24];
	Str size_value = {size_text, 0};
	if (pax_size) /* (formatting every header's size cost ~1 % of the one pass) */
		size_value.len = (uint32_t)snprintf(size_text, sizeof(size_text), "%llu",
						    (unsigned long long)size);
	mtime = mtime < 0 ? 0 : mtime > USTAR_MAX_NUMBER ? USTAR_MAX_NUMBER : mtime;
	Str short_link = {link.ptr, link.len < 100 ? link.len : 100};
	unsigned char block[TAR_BLOCK];
	if (pax_path || pax_link || pax_size) {
		size_t length = (pax_path ? pax_record(NULL, "path", name) : 0) +
				(pax_link ? pax_record(NULL, "linkpath", link) : 0) +
				(pax_size ? pax_record(NULL, "size", size_value) : 0);
		char *records = PyMem_RawMalloc(length + 32);
		if (records == NULL)
			return failed(o, ENOMEM);
		size_t at = 0;
		if (pax_path)
			at += pax_record(records + at, "path", name);
		if (pax_link)
			at += pax_record(records + at, "linkpath", link);
		if (pax_size)
			at += pax_record(records + at, "size", size_value);
		ustar_block(block, (Str){"", 0}, (Str){"PaxHeader", 9}, 'x', 0644, mtime, length,
			    (Str){"", 0});
		int bad = out_put(o, block, TAR_BLOCK) < 0 || out_put(o, records, length) < 0 ||
			  out_zeros(o, (TAR_BLOCK - length % TAR_BLOCK) % TAR_BLOCK) < 0;
		PyMem_RawFree(records);
		if (bad)
			return -1;
	}
	ustar_block(block, prefix, base, kind, mode, mtime, pax_size ? 0 : size, short_link);
	return out_put(o, block, TAR_BLOCK);
}
