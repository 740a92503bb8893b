// Issue #7 on the GPU: the per-tensor sensitivity sweep on the CUDA runner (replaceWeight on the
// device) against the CPU reference on stories260K: every ΔKL within 2% + 1e-7 of the CPU's, and
// the same stored formats and bytes. Skipped where no CUDA device is present.
#include <QtTest>

#include <cmath>

#include "calib/dataset.h"
#include "compute/backend.h"
#include "io/model_loader.h"
#include "layout/sensitivity.h"
#include "model/tokenizer.h"
#include "test_data.h"

using namespace ql;

class TestCudaSensitivity : public QObject {
    Q_OBJECT
private slots:
    void gpuMatchesCpu()
    {
        const char* rel = "models/stories260K/stories260K.gguf";
        const char* text = "text/eval/tinystories-valid-1000.txt";
        QL_REQUIRE_DATA(rel);
        QL_REQUIRE_DATA(text);
        if (listGpus().empty()) QSKIP("no CUDA device");
        auto model = openModel(test::dataPath(rel));
        QVERIFY(model.ok());
        auto tok = Tokenizer::create(*model);
        QVERIFY(tok.ok());
        auto content = readTextFile(test::dataPath(text));
        QVERIFY(content.ok());
        const auto windows = makeLlamaCppChunks(**tok, *content, 128, 4);
        SensitivityOptions o;
        for (const char* f : {"q4_0", "q8_0", "int4:g32"})
            o.formats.push_back(*parseQuantFormat(f));
        auto cpu = createCpuBackend();
        auto gpu = createBackend(BackendKind::Cuda);
        QVERIFY(gpu.ok());
        auto a = measureSensitivity(*model, *cpu, windows, nullptr, o);
        auto b = measureSensitivity(*model, **gpu, windows, nullptr, o);
        QVERIFY2(a.ok(), a.ok() ? "" : a.error().message.c_str());
        QVERIFY2(b.ok(), b.ok() ? "" : b.error().message.c_str());
        qInfo("CPU %.2f s, GPU %.2f s (%s)", a->seconds, b->seconds, b->device.c_str());
        QCOMPARE(a->tensors.size(), b->tensors.size());
        for (std::size_t t = 0; t < a->tensors.size(); ++t)
            for (std::size_t f = 0; f < a->formats.size(); ++f) {
                const auto& x = a->tensors[t].cells[f];
                const auto& y = b->tensors[t].cells[f];
                QCOMPARE(x.stored, y.stored);
                QCOMPARE(x.bytes, y.bytes);
                QVERIFY2(std::fabs(x.deltaKl - y.deltaKl) <= 1e-7 + 0.02 * x.deltaKl,
                         qPrintable(QString("%1 %2: cpu %3 gpu %4")
                                        .arg(QString::fromStdString(a->tensors[t].name))
                                        .arg(QString::fromStdString(a->formats[f]))
                                        .arg(x.deltaKl)
                                        .arg(y.deltaKl)));
            }
    }
};

QTEST_GUILESS_MAIN(TestCudaSensitivity)
#include "test_cuda_sensitivity.moc"
