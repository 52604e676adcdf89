#include "reactor/probe.hh"
