/* nlcore C API — umbrella header. */
#ifndef NLCORE_NLCORE_H_
#define NLCORE_NLCORE_H_
#include "nlcore/status.h"
#include "nlcore/newton_schulz.h"
#include "nlcore/dgd.h"
#include "nlcore/m3.h"
#include "nlcore/memory_mlp.h"
#include "nlcore/self_modifying.h"
#endif /* NLCORE_NLCORE_H_ */
