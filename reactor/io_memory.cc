#include "reactor/io_memory.hh"
