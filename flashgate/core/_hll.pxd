# C-level API of the visitor counter (see _hll.pyx for the theory of operation).

from libc.stdint cimport uint8_t

cdef enum:
    P = 14
    REGISTERS = 16384  # 1 << P
    Q = 50  # 64 - P
    BITS = 6
    HEADER = 16
    DENSE = 12288  # REGISTERS * BITS / 8


cdef class HyperLogLog:
    cdef uint8_t regs[REGISTERS]
    cdef public bint dirty  # a register grew since the last dump()

    cpdef add(self, str item)
