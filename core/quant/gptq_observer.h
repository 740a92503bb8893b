// Watching and steering a GPTQ run while it works: the events a run reports, layer by layer, and
// the pause gate it stops at. The events are plain values that say nothing of where GPTQ runs, so
// the CPU loop (quant/gptq.cpp) and a GPU pipeline report the same way; a front end (the GUI's
// live view, a log) implements GptqObserver.
//
// Order of events for one run (quantizeModel, quantizeModelSequential, or one quantizeGptq):
//   runStarted                 (whole-model runs only: the layers GPTQ will quantize, in order)
//   per GPTQ layer:  layerStarted, dampRaised*, layerProgress+ (one per lazy block), layerFinished
// A layer whose layerFinished was reported is in the run's result, also when the run is cancelled
// right after (QuantizeOptions::partialOnCancel). Observers are called on the worker thread that
// runs GPTQ, one call at a time; they must return quickly and must not call back into the run.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "quant/error_metrics.h"

namespace ql {

class PauseGate;

struct GptqPlannedLayer {
    std::string tensor;
    std::int64_t rows = 0;
    std::int64_t cols = 0;
    std::string format;  // formatToString of the stored format
};

struct GptqRunStart {
    std::vector<GptqPlannedLayer> layers;  // in the order they will be quantized
    bool sequential = false;               // Hessians recomputed block by block
};

struct GptqLayerStart {
    std::string tensor;
    std::int64_t rows = 0;
    std::int64_t cols = 0;
    std::string format;
    std::vector<double> hessianDiagonal;  // diag H as given (undamped), original column order
    std::vector<std::int32_t> order;      // processing order (original indices; act-order sorts)
    bool actOrder = false;
    double damp = 0;  // the fraction of mean(diag H) asked for; dampRaised reports raises
    std::int64_t blockSize = 0;
    std::int64_t deadColumns = 0;  // H_ii = 0
};

struct GptqLayerProgress {
    std::string tensor;
    std::int64_t block = 0;   // lazy block just finished, 0-based
    std::int64_t blocks = 0;  // lazy blocks in the layer
    std::int64_t column = 0;  // columns done (processing order)
    std::int64_t cols = 0;
    double fraction = 0;  // of the layer's column loop
};

struct GptqDampRaise {
    std::string tensor;
    double from = 0;  // fractions of mean(diag H)
    double to = 0;
    std::string message;  // as in GptqResult::dampRaises
};

struct GptqLayerDone {
    std::string tensor;
    double loss = 0;     // GPTQ's loss tr(dW H' dW^T), H' damped
    double rtnLoss = 0;  // the same for round-to-nearest
    OutputError error;   // tr(dW H dW^T), undamped, GPTQ
    OutputError rtnError;
    double damp = 0;  // the fraction finally used
    std::int64_t dampRaises = 0;
    std::int64_t deadColumns = 0;
    double seconds = 0;
};

class GptqObserver {
public:
    virtual ~GptqObserver() = default;
    virtual void runStarted(const GptqRunStart&) {}
    virtual void layerStarted(const GptqLayerStart&) {}
    virtual void layerProgress(const GptqLayerProgress&) {}
    virtual void dampRaised(const GptqDampRaise&) {}
    virtual void layerFinished(const GptqLayerDone&) {}
};

// What one quantizeGptq call reports to and stops at; every member is optional.
struct GptqMonitor {
    GptqObserver* observer = nullptr;
    PauseGate* gate = nullptr;  // passed between lazy blocks
    std::string tensor;         // the name events carry
};

}  // namespace ql
